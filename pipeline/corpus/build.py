"""The corpus stage's work: the built-in MEAD-shaped corpus (pipeline.corpus.builtin) or a real MEAD folder
(pipeline.corpus.mead) written atomically into the corpus folder (`build_corpus`); `run_corpus` adds its timings,
contact sheet and summary report. (The wide set's equivalents are in pipeline.corpus.wide.)"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from pipeline.core.config import BaseParams, CorpusParams
from pipeline.core.errors import InputError
from pipeline.core.store import atomic_output, dir_size, write_json
from pipeline.core.timings import write_timings
from pipeline.corpus.sheet import corpus_contact_sheet


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


def build_corpus(out_dir: Path, base: BaseParams, p: CorpusParams, params_path: Path = Path("params.yaml")) -> dict:
    """Write the corpus to out_dir atomically (nothing is left behind on failure); return a summary.
    `params_path`: the file `p` came from, named by errors about its settings."""
    seed_everything(base.seed)
    with atomic_output(out_dir) as tmp:
        if p.source == "builtin":
            from pipeline.corpus.builtin import generate_builtin

            manifest = generate_builtin(tmp, base, p)
        elif p.source == "mead":
            from pipeline.corpus.mead import ingest_mead

            if not p.mead_root:
                raise InputError(params_path, "corpus.source is 'mead' but corpus.mead_root is not set")
            manifest = ingest_mead(tmp, base, p)
        else:
            raise InputError(params_path, f"corpus.source must be 'builtin' or 'mead', not '{p.source}'")
    real = manifest[manifest.kind == "real"]
    return {
        "source": p.source,
        "clips": int(len(manifest)),
        "real_clips": int(len(real)),
        "counterfactual_clips": int(len(manifest) - len(real)),
        "actors": int(manifest.actor.nunique()),
        "frames": int(manifest.frames.sum()),
        "hours_of_video": round(float(manifest.frames.sum() / base.fps / 3600), 3),
        "size": p.size,
        "bytes_on_disk": dir_size(out_dir),
    }


def run_corpus(out_dir: Path, sheet: Path, report: Path, base: BaseParams, p: CorpusParams,
               params_path: Path = Path("params.yaml")) -> dict:
    """`build_corpus`, then its timings file, the contact sheet and the summary report; return the summary."""
    t0 = time.monotonic()
    summary = build_corpus(out_dir, base, p, params_path)
    write_timings(out_dir, {"seconds": round(time.monotonic() - t0, 1)})  # not in the report: DVC tracks it
    corpus_contact_sheet(out_dir, sheet)
    write_json(report, summary)
    return summary

