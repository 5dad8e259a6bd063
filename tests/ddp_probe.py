"""A tiny trainer for the DDP tests: a 2-layer MLP regressing a fixed random map, trained through `fit`.

    python -m tests.ddp_probe OUT --batch 8                                                   # one process
    python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.ddp_probe OUT --batch 8   # 2 ranks, 4 each
Each step draws the full batch from `step_rngs` and keeps this rank's shard, as the stage trainers do.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.training.distributed import shard
from pipeline.training.fit import TrainKnobs, fit
from pipeline.training.loop import seed_all, step_rngs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    seed_all(7)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    target_map = torch.randn(6, 3, generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step_fn(step: int) -> dict[str, float]:
        rng, _ = step_rngs(7, step)
        x = torch.from_numpy(rng.standard_normal((args.batch, 6)).astype("float32"))
        x, y = shard((x, torch.sin(x @ target_map)))
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"mse": float(loss.detach())}

    args.out.mkdir(parents=True, exist_ok=True)
    knobs = TrainKnobs(steps=6, max_minutes=0.0, lr=0.05, resume=False, checkpoint_every=3, log_every=2, threads=1)
    fit(step_fn, stage="ddp_probe", out=args.out / "probe.pt", losses_csv=args.out / "probe_losses.csv",
        config={"probe": 1}, modules={"mlp": model}, optimizers={"optimizer": optimizer}, p=knobs,
        metrics=lambda step, recent: {"steps": step, **recent})


if __name__ == "__main__":
    main()
