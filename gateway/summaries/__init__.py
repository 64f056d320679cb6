"""Thread summaries: each changed thread summarised nightly (and on demand), synced to the
devices and kept as a memory that retrieval offers for earlier conversations."""
