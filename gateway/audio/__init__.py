"""Voice: audio streams over the socket (`service`, `stream`, `chunks`, `spool`), end of
speech found by the gateway (`vad`, `turns`), transcripts into the conversation."""
