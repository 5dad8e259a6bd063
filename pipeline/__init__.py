"""The EMMN pipeline library: one package per paper section, in DVC order (a package imports only `core`,
`training`, `models` and the sections upstream of it; checked by the import contract in pyproject.toml).

core, training, models (networks only), corpus, audio (3.3), judges (the evaluator's nets), lipsync (3.2 pseudo
pairs), fomm (E_k, renderer), motion (3.2 Eq. 1-5), memory (3.4 Eq. 6-14), render (3.5), evaluation (4).
The CLI layer is `stages/`; nothing here imports it.
"""
