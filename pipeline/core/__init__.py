"""Infrastructure every section shares: params.yaml -> config dataclasses, Zarr/Parquet stores and the one atomic
writing path, media (video/audio I/O), checkpoints (strict official imports), one-line input errors, Dask helpers,
precision (base.precision) and timings, image quality (the one PSNR), `emmn env`, cache inspection and offline DVC
plots.

Serves every stage; imports nothing of the pipeline above it.
"""
