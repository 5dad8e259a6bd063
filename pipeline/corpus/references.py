"""The neutral reference frame of each actor: PNGs for people and `reference_*` arrays in frames.zarr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from pipeline.core.store import blosc_zstd, write_png


def write_reference_frames(out_dir: Path, actor_ids: list[str], images: np.ndarray,
                           landmarks: np.ndarray | None = None) -> None:
    (out_dir / "reference").mkdir(exist_ok=True)
    for actor, image in zip(actor_ids, images):
        write_png(out_dir / "reference" / f"{actor}.png", image)
    root = zarr.open_group(out_dir / "frames.zarr", mode="a")
    root.create_array("reference_frames", data=images, compressors=blosc_zstd(images.dtype),
                      dimension_names=("actor", "y", "x", "rgb"))
    if landmarks is not None:
        root.create_array("reference_landmarks", data=landmarks.astype(np.float32),
                          dimension_names=("actor", "point", "xy"))
    ids = root.create_array("reference_actor", shape=(len(actor_ids),), dtype=str)
    ids[:] = np.asarray(actor_ids)
