"""FOMM inference speed: ms per frame of keypoint detector + generator (one driving frame -> one output frame).

Measures what animation costs per frame: the source keypoints are computed once, then each driving
frame needs kp_detector(driving) + generator(source, kp_driving, kp_source). Configurations: official
vox-256 and the CPU-sized `FommConfig.slim(128)`, batch 1 and 8, fp32 and bf16 autocast. Weights are
random (speed does not depend on them). Median of `--iters` calls after one warm-up call.

    .venv/bin/python bench/fomm_infer.py [--iters 3] [--threads 2] [--configs vox256 slim128]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from pipeline.models.fomm import FommConfig, KPDetector, OcclusionAwareGenerator

CONFIGS = {"vox256": FommConfig.vox256, "slim128": lambda: FommConfig.slim(128)}


def timed_ms(fn, iters: int) -> float:
    """Median wall time of `fn()` in ms after one warm-up call."""
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench_one(config: FommConfig, batch: int, precision: str, iters: int) -> tuple[float, float]:
    """(kp detector ms, generator ms) per call at this batch size."""
    kp_detector, generator = KPDetector(config).eval(), OcclusionAwareGenerator(config).eval()
    gen = torch.Generator().manual_seed(0)
    source = torch.rand(batch, 3, config.image_size, config.image_size, generator=gen)
    driving = torch.rand(batch, 3, config.image_size, config.image_size, generator=gen)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        kp_source = kp_detector(source)
        kp_driving = kp_detector(driving)
        kp_ms = timed_ms(lambda: kp_detector(driving), iters)
        gen_ms = timed_ms(lambda: generator(source, kp_driving=kp_driving, kp_source=kp_source), iters)
    return kp_ms, gen_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["vox256", "slim128"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    header = f"{'config':<8} {'params':>7} {'batch':>5} {'prec':<5} {'kp ms/call':>11} {'gen ms/call':>12} " \
             f"{'ms/frame':>9}"
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.iters} after 1 warm-up")
    print(header)
    print("-" * len(header))
    for name in args.configs:
        config = CONFIGS[name]()
        params = sum(p.numel() for m in (KPDetector(config), OcclusionAwareGenerator(config)) for p in m.parameters())
        for batch in args.batches:
            for precision in args.precisions:
                kp_ms, gen_ms = bench_one(config, batch, precision, args.iters)
                print(f"{name:<8} {params / 1e6:>6.1f}M {batch:>5} {precision:<5} {kp_ms:>11.1f} {gen_ms:>12.1f} "
                      f"{(kp_ms + gen_ms) / batch:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
