"""The built-in MEAD-shaped synthetic corpus, the MEAD ingest and face detection (stage corpus); the wide
LRW/LRS2-shaped pre-training set and the LRW ingest (stage wide_corpus, paper §4.1's pre-training data)."""
