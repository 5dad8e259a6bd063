"""Summaries of our Zarr stores through Dask: arrays, shapes, chunks/shards, compression, clips, NaNs."""

from __future__ import annotations

import io
from pathlib import Path

import dask.array as da
import numpy as np

from pipeline.core.store import dir_size, list_arrays, open_store, read_index


def summarize_store(path: str | Path) -> dict:
    """Everything `emmn inspect` prints, as data (tests read it)."""
    path = Path(path)
    root = open_store(path)
    arrays = []
    for name, arr in list_arrays(root):
        lazy = da.from_zarr(arr)
        raw = int(np.prod(arr.shape)) * arr.dtype.itemsize
        on_disk = dir_size(path / name)
        row = {
            "name": name, "shape": tuple(arr.shape), "dtype": str(arr.dtype), "chunks": tuple(arr.chunks),
            "shards": tuple(arr.shards) if arr.shards else None,
            "dims": tuple(arr.metadata.dimension_names or ()),
            "compressors": ", ".join(type(c).__name__ for c in arr.compressors) or "none",
            "bytes": raw, "stored_bytes": on_disk, "ratio": round(raw / on_disk, 2) if on_disk else None,
            "nan": None,
        }
        if arr.dtype.kind == "f":
            row["nan"] = int(da.isnan(lazy).sum().compute())
        arrays.append(row)
    summary = {"path": str(path), "attrs": {k: v for k, v in root.attrs.items() if k != "params"},
               "arrays": arrays, "clips": None}
    try:
        index = read_index(path)
    except Exception:  # stores without a per-clip index (e.g. reference-only) are still inspectable
        index = None
    if index is not None and len(index):
        lengths = (index.stop - index.start).to_numpy()
        summary["clips"] = {"count": int(len(index)), "frames": int(lengths.sum()), "min": int(lengths.min()),
                            "median": float(np.median(lengths)), "mean": round(float(lengths.mean()), 2),
                            "max": int(lengths.max())}
    return summary


def format_summary(s: dict) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=s["path"])
    for col in ("array", "shape", "dtype", "chunks", "shards", "codec", "ratio", "NaN"):
        table.add_column(col)
    for a in s["arrays"]:
        table.add_row(a["name"], str(a["shape"]), a["dtype"], str(a["chunks"]), str(a["shards"]),
                      a["compressors"], str(a["ratio"]), "-" if a["nan"] is None else str(a["nan"]))
    console = Console(record=True, width=140, file=io.StringIO())
    console.print(table)
    for key, value in s["attrs"].items():
        console.print(f"[bold]{key}[/]: {value}")
    if s["clips"]:
        c = s["clips"]
        console.print(f"[bold]clips[/]: {c['count']}  frames: {c['frames']}  length min/median/mean/max: "
                      f"{c['min']}/{c['median']}/{c['mean']}/{c['max']}")
    return console.export_text()
