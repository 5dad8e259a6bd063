"""Paper Table 2 ("Ablation study for Motion Reconstruction") in keypoint space.

Five trainings of `train_motion` on the same inputs, each through the stage's worker with one switch
changed — full, w/o L_rec, w/o L_self, w/o L_e/m-con, w/o filter — then the numbers of motion.json
for each (pipeline/motion_report.py; f_e / f_m computed in memory instead of through decompose).
The paper's columns (PSNR, SSIM, M-LMD, F-LMD of frames rendered from the reconstructed keypoints)
need the renderer and belong to the evaluation issue; here the keypoint-space errors stand in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import BaseParams, MotionReportParams, TrainMotionParams, with_field
from pipeline.lipsync_data import read_manifest
from pipeline.models.motion import MotionNet, encode_frames, load_motion
from pipeline.motion_data import KeypointBank, read_pairs
from pipeline.motion_report import build_motion_report, evaluation_quadruples

# (name, label, params changed from the full model); the full model has every switch on
TABLE2_ROWS: tuple[tuple[str, str, dict[str, bool]], ...] = (
    ("no_rec", "w/o L_rec", {"use_rec": False}),
    ("no_self", "w/o L_self", {"use_self": False}),
    ("no_con", "w/o L_e/m-con", {"use_con": False}),
    ("no_filter", "w/o filter", {"use_filter": False}),
    ("full", "Ours (full)", {}),
)
FULL = {"use_rec": True, "use_self": True, "use_con": True, "use_filter": True}

# (report section, key, column header, lower is better)
COLUMNS: tuple[tuple[str, str, str, bool], ...] = (
    ("recon", "self", "self (held-out)", True),
    ("recon", "self_value_px", "self px", True),
    ("recon", "cross_heldout", "cross (held-out)", True),
    ("recon", "cross", "cross vs pseudo", True),
    ("recon", "cross_vs_counterfactual", "cross vs counterfactual", True),
    ("recon", "cross_vs_counterfactual_value_px", "cross vs cf px", True),
    ("probe", "emotion_acc_from_fe", "emotion acc f_e", False),
    ("probe", "emotion_acc_from_fm", "emotion acc f_m", True),
    ("probe", "mouth_r2_from_fm", "mouth R2 f_m", False),
    ("probe", "mouth_r2_from_fe", "mouth R2 f_e", True),
)


def corpus_features(net: MotionNet, bank: KeypointBank, manifest: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """f_e, f_m of every corpus row (what decompose writes), computed in memory."""
    actor_of = dict(zip(manifest.clip_id, manifest.actor))
    corpus = bank.corpus_index()
    rows = int(corpus.stop.max()) if len(corpus) else 0
    f_e = np.full((rows, net.config.expression_dim), np.nan, np.float32)
    f_m = np.full((rows, net.config.mouth_dim), np.nan, np.float32)
    for clip in corpus.itertuples():
        a = bank.actor(actor_of[clip.clip_id])
        s = slice(int(clip.start), int(clip.stop))
        f_e[s], f_m[s] = encode_frames(net, bank.value[s], bank.jacobian[s], bank.reference_value[a],
                                       bank.reference_jacobian[a])
    return f_e, f_m


def run_table2(kp_store: Path, pseudo_dir: Path, corpus_dir: Path, work_dir: Path, out_md: Path, base: BaseParams,
               p: TrainMotionParams, report_params: MotionReportParams, rows: tuple[str, ...] | None = None,
               log=print) -> dict[str, Any]:
    """Train each row into work_dir/<row>/ (checkpoint, loss log, motion.json), write the table; return
    {row: motion.json}. `rows` picks a subset by name (default: all five)."""
    from stages.train_motion import run_train_motion

    work_dir, out_md = Path(work_dir), Path(out_md)
    bank = KeypointBank(kp_store)
    manifest = read_manifest(corpus_dir)
    pairs = read_pairs(pseudo_dir)
    sync_path = Path(pseudo_dir) / "sync.parquet"
    sync = pd.read_parquet(sync_path) if sync_path.is_file() else None
    clips = pd.read_parquet(Path(pseudo_dir) / "clips.parquet")
    # one evaluation set for every row: the quadruples the filtered rows do not train on (when any)
    cross_set = evaluation_quadruples(pairs, sync, trained_with_filter=True)
    results: dict[str, Any] = {}
    for name, label, changes in TABLE2_ROWS:
        if rows is not None and name not in rows:
            continue
        row_p = with_field(p, **{**FULL, **changes, "resume": False})
        out = work_dir / name
        out.mkdir(parents=True, exist_ok=True)
        log(f"table2: {label} ({changes or 'every loss, filtered pairs'})")
        run_train_motion(kp_store, pseudo_dir, out / "motion.pt", out / "losses.csv", out / "losses.png", base,
                         row_p, log=log)
        net = load_motion(out / "motion.pt")
        f_e, f_m = corpus_features(net, bank, manifest)
        report = build_motion_report(net, bank, f_e, f_m, corpus_dir, pairs, sync, clips, report_params, cross_set)
        (out / "motion.json").write_text(json.dumps(report, indent=2) + "\n")
        results[name] = report
    write_table(results, out_md, p)
    return results


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4f}"


def write_table(results: dict[str, Any], out_md: Path, p: TrainMotionParams) -> None:
    """Markdown: one row per ablation, the best value of each column in bold."""
    labels = {name: label for name, label, _ in TABLE2_ROWS}
    names = [n for n, _, _ in TABLE2_ROWS if n in results]
    header = "| Method | " + " | ".join(h + (" ↓" if low else " ↑") for _, _, h, low in COLUMNS) + " |"
    lines = ["# Table 2 analogue: Motion Reconstruction ablations (keypoint space)", "",
             "Each row trains `train_motion` with one switch off (scripts/table2_motion.py); numbers are "
             "data/reports/motion.json's (pipeline/motion_report.py): reconstruction errors are "
             "||(p, j) - (p', j')||_2 (mean over keypoints of the L2 norm of value and Jacobian differences) "
             "or keypoint position errors in pixels; probes are held-out emotion accuracy and mouth-opening R^2. "
             "Rendered PSNR / SSIM / M-LMD / F-LMD (the paper's columns) come with the evaluation stage.", "",
             f"Training: {p.max_minutes} min budget, at most {p.steps} steps, batch {p.batch_size}, lr {p.lr}, "
             f"lambda_e-con {p.lambda_e_con}, lambda_m-con {p.lambda_m_con}.", "", header,
             "|" + "---|" * (len(COLUMNS) + 1)]
    best = {}
    for section, key, _, low in COLUMNS:
        values = [results[n][section].get(key) for n in names]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        best[key] = (min(finite) if low else max(finite)) if finite else None
    for name in names:
        cells = []
        for section, key, _, _ in COLUMNS:
            value = results[name][section].get(key)
            text = _fmt(value)
            cells.append(f"**{text}**" if value is not None and value == best[key] and len(names) > 1 else text)
        lines.append(f"| {labels[name]} | " + " | ".join(cells) + " |")
    steps = ", ".join(f"{labels[n]} {results[n]['model']['step']}" for n in names)
    cross_sets = sorted({results[n]["info"]["cross_set"] for n in names})
    lines += ["", f"Steps trained: {steps}.", "", "Cross vs pseudo / counterfactual measured on: "
              + "; ".join(cross_sets) + ".", ""]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(lines))


__all__ = ["COLUMNS", "TABLE2_ROWS", "corpus_features", "run_table2", "write_table"]
