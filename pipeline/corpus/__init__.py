"""The built-in MEAD-shaped synthetic corpus, the MEAD ingest and face detection (stage corpus)."""
