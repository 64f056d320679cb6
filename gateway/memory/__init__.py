"""Memory: every message, whichever path wrote it, embedded off the write path from the
durable queue in PostgreSQL (storage/embedding_queue.py)."""
