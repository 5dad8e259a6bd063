"""Synthetic-corpus face renderer speed: ms per frame at 128 and 256 px on one core.

For each size, renders --frames frames spread over --actors actors with random controls: every
expression control uniform over its whole range (the worst case: all detail maps active, mouth
open half the time) and head pose within +-15 deg yaw, +-10 pitch, +-8 roll. A second pass
times "speech" frames: mouth controls only with a mild emotion, the corpus' common case. The
per-actor texture is built on the actor's first frame (cached afterwards) and timed separately.
Reports wall time and process CPU time per frame (CPU time is robust to other load on the machine).

    .venv/bin/python bench/corpus_render.py [--frames 300] [--sizes 128 256] [--sheet /tmp/face_sheet.png]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: the corpus stage runs one worker per core

import argparse  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.corpus import face, face_render  # noqa: E402
from pipeline.corpus.face import render_frame, sample_identity  # noqa: E402

RANGES = {
    "jaw_open": (0, 1), "lip_spread": (0, 1), "lip_round": (0, 1), "lip_closure": (0, 1),
    "mouth_corner": (-1, 1), "mouth_width": (-1, 1), "smirk": (0, 1), "upper_lip_raise": (0, 1),
    "brow_raise": (-1, 1), "brow_furrow": (0, 1), "brow_inner_up": (0, 1), "lid_open": (-1, 1),
    "cheek_raise": (0, 1), "nose_wrinkle": (0, 1), "blink": (0, 1),
    "yaw": (-15, 15), "pitch": (-10, 10), "roll": (-8, 8), "tx": (-0.03, 0.03), "ty": (-0.03, 0.03),
    "scale": (0.95, 1.05),
}
SPEECH = ("jaw_open", "lip_spread", "lip_round", "lip_closure")

# contact sheet columns: (label, controls)
EXPRESSIONS = [
    ("neutral", {}),
    ("smile", {"mouth_corner": 1.0, "mouth_width": 0.6, "cheek_raise": 0.9, "lid_open": -0.3, "jaw_open": 0.1}),
    ("sad", {"brow_inner_up": 1.0, "brow_raise": -0.2, "lid_open": -0.5, "mouth_corner": -0.9, "mouth_width": -0.4}),
    ("surprise", {"jaw_open": 0.75, "brow_raise": 1.0, "lid_open": 1.0, "lip_round": 0.3}),
    ("angry", {"brow_furrow": 1.0, "brow_raise": -0.5, "lid_open": -0.3, "mouth_corner": -0.35,
               "lip_closure": 0.8, "upper_lip_raise": 0.25}),
    ("disgust", {"nose_wrinkle": 1.0, "upper_lip_raise": 0.9, "brow_furrow": 0.5, "cheek_raise": 0.45,
                 "mouth_corner": -0.4}),
    ("contempt", {"smirk": 1.0, "lid_open": -0.35, "brow_raise": 0.2}),
    ("blink", {"blink": 1.0}),
    ("yaw -20", {"yaw": -20.0, "jaw_open": 0.3}),
    ("yaw +20 pitch", {"yaw": 20.0, "pitch": 10.0, "roll": 8.0}),
]


def random_controls(rng: np.random.Generator, speech_only: bool) -> dict[str, float]:
    """One frame's controls: everything random, or speech visemes over a mild fixed emotion."""
    if speech_only:
        c = {name: float(rng.uniform(*RANGES[name])) for name in SPEECH}
        c.update(mouth_corner=0.3, cheek_raise=0.2, yaw=float(rng.uniform(-6, 6)), pitch=float(rng.uniform(-4, 4)))
        return c
    return {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in RANGES.items()}


def bench_size(size: int, frames: int, actors: int, speech_only: bool, seed: int) -> dict[str, float]:
    """ms per frame (wall, CPU) after each actor's first frame, and ms per actor for that first frame."""
    rng = np.random.default_rng(seed)
    people = [sample_identity(np.random.default_rng(seed + 1000 + k)) for k in range(actors)]
    face.head_texture.cache_clear()  # every pass pays for its own textures
    face_render._BODY_CACHE.clear()
    face_render._BACKGROUND_CACHE.clear()
    first = []
    for person in people:  # first frame builds and caches the actor's texture
        start = time.perf_counter()
        render_frame(person, {}, size)
        first.append(time.perf_counter() - start)
    controls = [random_controls(rng, speech_only) for _ in range(frames)]
    wall, cpu = time.perf_counter(), time.process_time()
    for i, c in enumerate(controls):
        render_frame(people[i % actors], c, size)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall_ms": 1e3 * wall / frames, "cpu_ms": 1e3 * cpu / frames, "first_frame_ms": 1e3 * float(np.mean(first))}


def contact_sheet(seeds: list[int], size: int) -> np.ndarray:
    """RGB grid: one row per actor, one column per entry of EXPRESSIONS, with a caption strip."""
    rows = []
    for seed in seeds:
        person = sample_identity(np.random.default_rng(seed))
        rows.append(np.concatenate([render_frame(person, c, size).image for _, c in EXPRESSIONS], axis=1))
    sheet = np.concatenate(rows, axis=0)
    caption = np.full((18, sheet.shape[1], 3), 245, np.uint8)
    for k, (label, _) in enumerate(EXPRESSIONS):
        cv2.putText(caption, label, (k * size + 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (30, 30, 30), 1, cv2.LINE_AA)
    return np.concatenate([caption, sheet], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--actors", type=int, default=4)
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", help="also write a contact sheet (actors x expressions) to this PNG")
    parser.add_argument("--sheet-size", type=int, default=128)
    args = parser.parse_args()
    cv2.setNumThreads(1)

    print(f"{'size':>5} {'controls':>9} {'wall ms/frame':>14} {'cpu ms/frame':>13} {'first frame ms':>15}")
    for size in args.sizes:
        for speech_only in (False, True):
            r = bench_size(size, args.frames, args.actors, speech_only, args.seed)
            label = "speech" if speech_only else "random"
            print(f"{size:>5} {label:>9} {r['wall_ms']:>14.2f} {r['cpu_ms']:>13.2f} {r['first_frame_ms']:>15.1f}")
    if args.sheet:
        sheet = contact_sheet(list(range(6)), args.sheet_size)
        cv2.imwrite(args.sheet, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        print(f"contact sheet {sheet.shape[1]}x{sheet.shape[0]} -> {args.sheet}")


if __name__ == "__main__":
    main()
