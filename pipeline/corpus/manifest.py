"""The corpus manifest (manifest.parquet): one row per clip, as the corpus stage writes it, and an even
spread of its clips (manifest order spreads actors and emotions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import InputError


def read_manifest(corpus_dir: Path) -> pd.DataFrame:
    path = Path(corpus_dir) / "manifest.parquet"
    if not path.is_file():
        raise InputError(path, "corpus manifest not found (run the corpus stage first)")
    return pd.read_parquet(path)


def select_evenly(items: list[str], count: int) -> list[str]:
    """`count` items spread evenly over the list (manifest order spreads actors and emotions); 0 = all."""
    if count <= 0 or count >= len(items):
        return list(items)
    picks = np.unique(np.linspace(0, len(items) - 1, count).round().astype(int))
    return [items[i] for i in picks]


def real_clips(manifest: pd.DataFrame, split: str, min_frames: int) -> pd.DataFrame:
    """Real clips of a split with at least `min_frames` frames (a trainer's windows must fit)."""
    return manifest[(manifest.split == split) & (manifest.kind == "real") & (manifest.frames >= min_frames)]


def training_sets(own, wide, pretrain_wide: bool) -> list:
    """What a trainer learns from: its own set, then the wide pre-training set when `pretrain_wide` is on and
    one was given (`own`/`wide` are whatever the trainer reads: a folder, or a (folder, audio store) pair)."""
    return [own] + ([wide] if pretrain_wide and wide else [])
