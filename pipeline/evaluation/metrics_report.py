"""Per-clip metrics -> the rows of data/reports/metrics.json, Table 1 as markdown, the confusion matrix PNG.

metrics.json: one object per row (`ground_truth`, `static`, `wav2lip_only`, `baseline`, `mmn`, `emmn`),
each with psnr, ssim, m_lmd, f_lmd, sync_conf, lse_d, expr_err_mouth, expr_err_upper (the expression judge's
controls read off the generated frames vs the truth's, mean absolute error; `expr_err_by_control` per control),
emotion_acc. A value is the mean over the row's
clips of the per-clip value (each clip first averaged over its frames, as EAT averages over videos);
emotion_acc is the share of clips classified as their label. null where a metric cannot apply (PSNR of
the ground truth against itself is infinite) or where no judge could measure it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.store import write_png
from pipeline.evaluation.metrics import json_number
from pipeline.judges.scores import confusion_image

ROWS = ("ground_truth", "static", "wav2lip_only", "baseline", "mmn", "emmn")
METRICS = ("psnr", "ssim", "m_lmd", "f_lmd", "sync_conf", "lse_d", "expr_err_mouth", "expr_err_upper", "emotion_acc")
ROW_LABELS = {
    "ground_truth": "Ground truth",
    "static": "Static reference frame",
    "wav2lip_only": "Wav2Lip only (lips on the neutral frame)",
    "baseline": "Baseline (ablation 1: keypoints from f_i, e_c, e_e)",
    "mmn": "MMN (ablation 2: memory over three keypoints)",
    "emmn": "EMMN",
}
COLUMNS = {"psnr": "PSNR ↑", "ssim": "SSIM ↑", "m_lmd": "M-LMD ↓", "f_lmd": "F-LMD ↓", "sync_conf": "Sync_conf ↑",
           "lse_d": "LSE-D ↓", "expr_err_mouth": "Expr err mouth ↓", "expr_err_upper": "Expr err upper ↓",
           "emotion_acc": "Emotion acc ↑"}
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "m_lmd": False, "f_lmd": False, "sync_conf": True,
                    "lse_d": False, "expr_err_mouth": False, "expr_err_upper": False, "emotion_acc": True}


def _clip_mean(values: pd.Series) -> float | None:
    """Mean over clips; None if no clip has the metric or any clip's value is infinite (cannot apply)."""
    values = pd.to_numeric(values, errors="coerce").astype(float)
    if values.isna().all() or np.isinf(values).any():
        return None
    return float(values.mean())


def aggregate_rows(per_clip: pd.DataFrame, rows: Sequence[str] = ROWS) -> dict[str, dict[str, float | None]]:
    """Table rows from per-clip results (columns: row, psnr, ssim, m_lmd, f_lmd, sync_conf, lse_d,
    emotion_correct). Rows without clips are left out; the order follows `rows`."""
    out: dict[str, dict[str, float | None]] = {}
    for row in rows:
        clips = per_clip[per_clip["row"] == row]
        if clips.empty:
            continue
        values = {m: json_number(_clip_mean(clips[m])) if m in clips else None for m in METRICS if m != "emotion_acc"}
        correct = clips["emotion_correct"].dropna() if "emotion_correct" in clips else pd.Series(dtype=bool)
        values["emotion_acc"] = json_number(float(correct.astype(float).mean())) if len(correct) else None
        out[row] = {m: values[m] for m in METRICS}
        controls = [c for c in clips.columns if c.startswith("expr_") and not c.startswith("expr_err_")]
        if controls:  # the expression columns, control by control (what is missing: brows? smile? jaw?)
            out[row]["expr_err_by_control"] = {c[len("expr_"):]: json_number(_clip_mean(clips[c])) for c in controls}
    return out


def _cell(value: float | None, metric: str) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}%" if metric == "emotion_acc" else f"{value:.3f}" if metric == "ssim" else f"{value:.2f}"


def best_generated(rows: Mapping[str, Mapping[str, float | None]], metric: str) -> str | None:
    """The generated row (not the ground truth) with the best value of `metric`."""
    scored = {r: v[metric] for r, v in rows.items() if r != "ground_truth" and v.get(metric) is not None}
    if not scored:
        return None
    pick = max if HIGHER_IS_BETTER[metric] else min
    return pick(scored, key=scored.get)


def comparison_notes(rows: Mapping[str, Mapping[str, float | None]], subject: str = "emmn") -> list[str]:
    """One line per column where `subject` is not the best generated row, naming the row that beats it."""
    if subject not in rows:
        return []
    notes = []
    for metric in METRICS:
        best, mine = best_generated(rows, metric), rows[subject].get(metric)
        if best is None or mine is None or best == subject or rows[best][metric] == mine:
            continue
        winner, loser = ROW_LABELS.get(best, best), ROW_LABELS.get(subject, subject)
        notes.append(f"{COLUMNS[metric].split()[0]}: {winner} beats {loser} "
                     f"({_cell(rows[best][metric], metric)} vs {_cell(mine, metric)}).")
    return notes


def table1_markdown(rows: Mapping[str, Mapping[str, float | None]], *, title: str = "Table 1",
                    notes: Sequence[str] = ()) -> str:
    """Markdown table, one line per row, best generated value per column in bold, then the notes."""
    best = {m: best_generated(rows, m) for m in METRICS}
    lines = [f"## {title}", "", "| Method | " + " | ".join(COLUMNS[m] for m in METRICS) + " |",
             "|---|" + "---:|" * len(METRICS)]
    for row, values in rows.items():
        cells = [(f"**{_cell(values[m], m)}**" if best[m] == row else _cell(values[m], m)) for m in METRICS]
        lines.append(f"| {ROW_LABELS.get(row, row)} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: best generated row per column (ground truth excluded). n/a: the metric cannot apply "
                  "(PSNR of the ground truth against itself is infinite) or no judge measured it."]
    beaten = comparison_notes(rows)
    if beaten:
        lines += ["", "Where EMMN does not win:"] + [f"- {n}" for n in beaten]
    if notes:
        lines += [""] + list(notes)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- confusion matrix


def write_confusion_sheet(matrices: Mapping[str, np.ndarray], classes: Sequence[str], path: str | Path) -> None:
    """Several confusion matrices (e.g. one per table row) side by side in one PNG, titled by their keys."""
    write_png(path, np.concatenate([confusion_image(m, classes, title) for title, m in matrices.items()], axis=1))
