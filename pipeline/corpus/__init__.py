"""The built-in MEAD-shaped synthetic corpus and the MEAD ingest."""
