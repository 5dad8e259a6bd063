"""Inputs of the Motion Reconstruction stages on the tiny corpus, built once per test session.

Pseudo clips here are the corpus's counterfactual renders (a perfect Wav2Lip: y^{i,b} = the exact
target), laid out by pipeline.lipsync.pseudo's own planning (plan_redubs, quadruples) as pseudo_pairs writes
them; sync.parquet keeps a fixed half of them. That keeps the fixture to seconds (no SyncNet/Wav2Lip
training) and makes "pseudo label vs counterfactual" exactly zero, a number the report must reproduce.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import BaseParams
from pipeline.core.store import ArraySpec, RaggedStoreWriter, open_store
from pipeline.lipsync.pseudo import plan_redubs, quadruples
from pipeline.training.loop import torch_threads
from tests.conftest import tiny_section

BASE = BaseParams(seed=5, workers=0, device="cpu")


def write_perfect_pseudo(corpus: Path, out: Path) -> pd.DataFrame:
    """data/pseudo/ (frames.zarr, clips.parquet, pairs.parquet, sync.parquet) with counterfactual frames."""
    manifest = pd.read_parquet(corpus / "manifest.parquet")
    plan = plan_redubs(manifest, sentences_per_clip=1)  # the counterfactual sentence first
    assert (plan.counterfactual_start >= 0).all()
    frames = open_store(corpus / "frames.zarr")["frames"]
    size = frames.shape[1]
    out.mkdir(parents=True, exist_ok=True)
    writer = RaggedStoreWriter(out / "frames.zarr", list(plan.pseudo_clip_id), list(plan.frames),
                               {"frames": ArraySpec((size, size, 3), "uint8", ("y", "x", "rgb"))}, attrs={},
                               chunk_frames=16, shard_frames=256)
    for i, row in enumerate(plan.itertuples()):
        writer.write_clip(i, {"frames": frames[row.counterfactual_start:row.counterfactual_stop]})
    writer.close()
    plan["start"], plan["stop"] = writer.starts, writer.stops
    plan.drop(columns=[c for c in plan.columns if c.endswith(("_start", "_stop"))]).to_parquet(
        out / "clips.parquet", index=False)
    quadruples(plan, "pingpong").to_parquet(out / "pairs.parquet", index=False)
    kept = np.arange(len(plan)) % 4 != 3  # 3 of 4 clips kept: some quadruples are rejected
    pd.DataFrame({"pseudo_clip_id": plan.pseudo_clip_id, "confidence": np.where(kept, 1.0, 0.0),
                  "kept": kept}).to_parquet(out / "sync.parquet", index=False)
    return plan


@pytest.fixture(scope="session")
def motion_inputs(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    """corpus, pseudo folder, keypoints.zarr (corpus + pseudo clips + references) from a 6-step tiny FOMM."""
    from pipeline.fomm.keypoints import build_keypoints
    from stages.train_fomm import run_train_fomm

    out = tmp_path_factory.mktemp("motion_inputs")
    write_perfect_pseudo(tiny_corpus, out / "pseudo")
    with torch_threads(1):
        run_train_fomm(tiny_corpus, out / "fomm.pt", out / "fomm_losses.csv", BASE,
                       tiny_section("train_fomm"))
        build_keypoints(tiny_corpus, out / "fomm.pt", out / "keypoints.zarr", BASE,
                        tiny_section("keypoints", extra_frames=(str(out / "pseudo" / "frames.zarr"),)))
    return {"corpus": tiny_corpus, "pseudo": out / "pseudo", "keypoints": out / "keypoints.zarr", "dir": out}
