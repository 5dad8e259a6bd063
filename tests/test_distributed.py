"""torchrun DDP through the one trainer: N ranks with B / N each take the steps one process takes with batch B,
rank 0 alone writes; sharding rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.checkpoints import load_training_state
from pipeline.training.distributed import World, shard
from pipeline.training.loop import read_loss_csv

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> None:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def test_two_gloo_ranks_with_half_batches_match_one_process(tmp_path):
    run(["-m", "tests.ddp_probe", str(tmp_path / "one"), "--batch", "8"])
    run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "tests.ddp_probe",
         str(tmp_path / "two"), "--batch", "8"])
    one, two = (load_training_state(tmp_path / name / "probe.pt") for name in ("one", "two"))
    assert one["step"] == two["step"] == 6
    for key, weight in one["model"]["mlp"].items():
        torch.testing.assert_close(two["model"]["mlp"][key], weight, rtol=1e-5, atol=1e-6)
    # the logged loss is the mean over ranks: the full batch's mean
    logged_one, logged_two = (read_loss_csv(tmp_path / name / "probe_losses.csv") for name in ("one", "two"))
    assert [r["step"] for r in logged_two] == [2, 4, 6]
    np.testing.assert_allclose([r["mse"] for r in logged_two], [r["mse"] for r in logged_one], rtol=1e-5)
    # rank 0 alone wrote: the same files as one process, no temp or per-rank leftovers
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_shard_cuts_contiguous_equal_slices_of_nested_batches():
    x = torch.arange(12).view(6, 2)
    assert shard(x, World(0, 1)) is x
    first, second = (shard({"x": x, "n": 3, "pair": (x[:, 0], None)}, World(r, 2)) for r in (0, 1))
    assert first["x"].tolist() == x[:3].tolist() and second["x"].tolist() == x[3:].tolist()
    assert second["pair"][0].tolist() == [6, 8, 10] and second["pair"][1] is None and second["n"] == 3
    with pytest.raises(ValueError, match="multiple of base.processes"):
        shard(x, World(0, 4))


def test_audio_quads_shard_each_emotion_block_alike():
    from pipeline.audio.data import QuadBatch, shard_quads
    from pipeline.training import distributed

    quads = 4
    seg = torch.arange(quads).float()
    labels = torch.tensor([10 * block + q for block in range(4) for q in range(quads)])  # a..., b..., c..., d...
    batch = QuadBatch(seg, seg, seg, seg, labels.float(), labels)
    original = distributed.world
    try:
        distributed.world = lambda: World(1, 2)
        import pipeline.audio.data as audio_data
        audio_data.world = distributed.world
        part = shard_quads(batch)
    finally:
        distributed.world = original
        audio_data.world = original
    assert part.seg_a.tolist() == [2, 3]
    assert part.labels.tolist() == [2, 3, 12, 13, 22, 23, 32, 33]
