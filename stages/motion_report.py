"""`motion_report` stage: data/reports/motion.json, Motion Reconstruction measured on the corpus's labels.

    python -m stages.motion_report               # what dvc repro runs
    emmn motion_report --params params.yaml
Reads data/models/motion.pt, data/features/keypoints.zarr, data/features/motion.zarr (the f_e / f_m
decompose wrote: the probes measure the features later stages consume), the corpus (manifest,
per-frame render controls) and data/pseudo/ (pairs, sync, clips). A stage of its own so that
decompose's outputs depend on nothing but the model and the keypoints. What each number means:
pipeline/motion/report.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer

from pipeline.core.config import MotionReportParams, load_section
from pipeline.core.errors import InputError
from pipeline.core.store import open_store, read_index
from pipeline.models.motion import load_motion
from pipeline.motion.data import KeypointBank, read_pairs
from pipeline.motion.report import build_motion_report, write_report
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


def read_features(motion_store: Path, bank: KeypointBank) -> tuple[np.ndarray, np.ndarray]:
    """f_e, f_m of motion.zarr, checked to have the keypoint store's corpus index."""
    index = read_index(motion_store)
    if not index.reset_index(drop=True).equals(bank.corpus_index()):
        raise InputError(motion_store, "per-clip index differs from the keypoint store's corpus clips "
                                       "(re-run decompose)")
    root = open_store(motion_store)
    return np.asarray(root["f_e"][:]), np.asarray(root["f_m"][:])


def run_motion_report(model_path: Path, kp_store: Path, motion_store: Path, corpus_dir: Path, pseudo_dir: Path,
                      report: Path, p: MotionReportParams) -> dict:
    net = load_motion(model_path)
    bank = KeypointBank(kp_store)
    f_e, f_m = read_features(motion_store, bank)
    pairs = read_pairs(pseudo_dir)
    sync_path, clips_path = Path(pseudo_dir) / "sync.parquet", Path(pseudo_dir) / "clips.parquet"
    sync = pd.read_parquet(sync_path) if sync_path.is_file() else None
    if not clips_path.is_file():
        raise InputError(clips_path, "pseudo clips table not found (run pseudo_pairs first)")
    summary = build_motion_report(net, bank, f_e, f_m, corpus_dir, pairs, sync, pd.read_parquet(clips_path), p)
    write_report(summary, report)
    return summary


@app.command()
@one_line_errors
def motion_report(
    params: ParamsOption = Path("params.yaml"),
    model: Annotated[Path, typer.Option(help="motion.pt from train_motion")] = Path("data/models/motion.pt"),
    keypoints: Annotated[Path, typer.Option(help="keypoint store")] = Path("data/features/keypoints.zarr"),
    features: Annotated[Path, typer.Option(help="motion.zarr from decompose")] = Path("data/features/motion.zarr"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    pseudo: Annotated[Path, typer.Option(help="pseudo_pairs folder")] = Path("data/pseudo"),
    report: Annotated[Path, typer.Option(help="report JSON")] = Path("data/reports/motion.json"),
) -> None:
    """Self / cross reconstruction errors and linear probes of f_e, f_m into data/reports/motion.json."""
    p = load_section("motion_report", params)
    summary = run_motion_report(model, keypoints, features, corpus, pseudo, report, p)
    typer.echo(json.dumps({k: summary[k] for k in ("recon", "probe")}))


if __name__ == "__main__":
    app()
