"""fp32 vs bf16 on this machine: the default renderer (E_k + generator, as `emmn generate` runs it) and one
default train_fomm step, and what `base.precision: auto` picks here.

bf16 autocast halves a step where the hardware computes bf16 (AVX-512 BF16 / AMX / CUDA) and is tens of times
slower where torch emulates it (AVX2): run this on a new machine before trusting any timing. Weights are the
default params' architecture with random init (speed does not depend on them). Median of `--iters` calls after a
warm-up call; a call slower than `--slow` seconds is measured once (emulated bf16 takes minutes).

    .venv/bin/python bench/precision.py [--iters 3] [--threads 2] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from pipeline.core.config import load_section
from pipeline.core.precision import cpu_capability, resolve_precision
from pipeline.fomm.train import FommTrainer, fomm_config
from pipeline.models.fomm import KPDetector, OcclusionAwareGenerator
from pipeline.training.loop import autocast


def timed_seconds(fn, iters: int, slow: float) -> float:
    """Median wall time of `fn()`; the warm-up call alone when it already took more than `slow` seconds."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    if first > slow:
        return first
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def render_seconds(params: Path, bf16: bool, batch: int, iters: int, slow: float) -> float:
    """Seconds per frame of E_k(driving) + generator(source, kp) at the default renderer's size."""
    config = fomm_config(load_section("train_fomm", params))
    kp_detector, generator = KPDetector(config).eval(), OcclusionAwareGenerator(config).eval()
    gen = torch.Generator().manual_seed(0)
    source, driving = (torch.rand(batch, 3, config.image_size, config.image_size, generator=gen) for _ in range(2))
    with torch.inference_mode(), autocast(torch.device("cpu"), bf16):
        kp_source = kp_detector(source)

        def frame() -> None:
            generator(source, kp_driving=kp_detector(driving), kp_source=kp_source)

        return timed_seconds(frame, iters, slow) / batch


def train_step_seconds(params: Path, bf16: bool, iters: int, slow: float) -> float:
    """Seconds of one default train_fomm step (batch `train_fomm.batch_size`, GAN on as after `gan_start`)."""
    p = load_section("train_fomm", params)
    config = fomm_config(p)
    trainer = FommTrainer(config, p, torch.device("cpu"), seed=0, bf16=bf16)
    gen = torch.Generator().manual_seed(0)
    size = config.image_size
    source, driving = (torch.rand(p.batch_size, 3, size, size, generator=gen) for _ in range(2))
    # normalized landmarks of source and driving ([2,B,68,2] in [-1, 1]), so the landmark terms run as in training
    landmarks = (torch.rand(2, p.batch_size, 68, 2, generator=gen) * 1.6 - 0.8
                 if p.landmark_flow or p.landmark_anchors else None)
    return timed_seconds(lambda: trainer.train_step(source, driving, gen, None, landmarks, gan=p.gan_weight > 0),
                         iters, slow)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="renderer frames per call (generate.batch_size)")
    parser.add_argument("--slow", type=float, default=20.0, help="measure once when the warm-up exceeds this (s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    auto = resolve_precision("auto", "cpu")
    print(f"CPU: {cpu_capability()}; torch {torch.__version__}, {args.threads} threads; auto -> {auto.resolved}")
    rows = []
    for name in ("fp32", "bf16"):
        bf16 = name == "bf16"
        rows.append((name, render_seconds(args.params, bf16, args.batch, args.iters, args.slow),
                     train_step_seconds(args.params, bf16, args.iters, args.slow)))
    fp32_render, fp32_step = rows[0][1], rows[0][2]
    print("| precision | renderer ms/frame | train_fomm step s | vs fp32 (render / step) |")
    print("|---|---|---|---|")
    for name, render, step in rows:
        print(f"| {name}{' (auto)' if name == auto.resolved else ''} | {1000 * render:.1f} | {step:.2f} | "
              f"{render / fp32_render:.2f}x / {step / fp32_step:.2f}x |")


if __name__ == "__main__":
    main()
