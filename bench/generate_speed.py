"""`emmn generate` speed: ms per frame of a whole photo -> mp4 run (EMMN keypoints, renderer, paste-back, encoding).

Times `generate_video` (what `emmn generate --image --audio --out` runs after loading the models) on a reference
photo and a speech clip of the corpus, for each side and precision asked:
* 128: the run's own models (data/models: emmn.pt + emmn_render.pt or fomm.pt), as trained;
* 256: the same EMMN net with a vox-256-layout renderer (FommConfig.vox256, the official FOMM size) of random
  weights: speed does not depend on the weights, and the paper's renderer is that size.
Prints one table row per (side, precision) and, with --json, writes them. Median of --iters runs after a warm-up.

    .venv/bin/python bench/generate_speed.py [--device cpu] [--sizes 128 256] [--precisions fp32 bf16] [--iters 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from pipeline.core.config import load_section, with_field
from pipeline.core.precision import cpu_has_native_bf16, pick_device
from pipeline.models.fomm import FommConfig, KPDetector, OcclusionAwareGenerator
from pipeline.render.generate import generate_video, load_animator, renderer_path


def speech_and_photo(corpus: Path) -> tuple[Path, Path]:
    """The first held-out clip's wav and its actor's neutral reference photo."""
    manifest = pd.read_parquet(corpus / "manifest.parquet")
    clip = manifest[manifest.split == "test"].iloc[0]
    return corpus / "wav" / f"{clip.clip_id}.wav", corpus / "reference" / f"{clip.actor}.png"


def vox256_animator(animator, device: torch.device):
    """The animator with a random-weight vox-256 renderer predicting the EMMN net's keypoint count."""
    config = dataclasses.replace(FommConfig.vox256(), num_kp=animator.emmn.config.num_kp)
    torch.manual_seed(0)
    return dataclasses.replace(animator, kp_detector=KPDetector(config).eval().to(device),
                               generator=OcclusionAwareGenerator(config).eval().to(
                                   device=device, memory_format=torch.channels_last),  # as load_animator does
                               image_size=256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("data/models"))
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    device = pick_device(args.device)
    base, p = load_section("base", args.params), load_section("generate", args.params)
    audio, photo = speech_and_photo(args.corpus)
    own = load_animator(args.models / "emmn.pt", renderer_path(args.models), device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            animator = own if size == own.image_size else vox256_animator(own, device) if size == 256 else None
            if animator is None:
                print(f"size {size}: only the run's own side ({own.image_size}) and 256 (vox-256)")
                continue
            for precision in args.precisions:
                if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
                    print(f"size {size} bf16: skipped, this CPU has no native bf16 (emulated bf16 is far slower)")
                    continue
                run_base = with_field(base, precision=precision, device=args.device)
                out = Path(tmp) / f"out_{size}_{precision}.mp4"

                def once() -> tuple[float, int]:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    summary = generate_video(photo, audio, out, animator, run_base, p)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    return time.perf_counter() - start, summary["frames"]

                once()  # warm-up: kernels, allocator, ffmpeg start
                times, frames = zip(*(once() for _ in range(args.iters)), strict=True)
                seconds = statistics.median(times)
                row = {"side": size, "precision": precision, "device": str(device), "frames": frames[0],
                       "ms_per_frame": round(1000 * seconds / frames[0], 2), "fps": round(frames[0] / seconds, 1),
                       "threads": torch.get_num_threads()}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
