"""`evaluate` stage (paper §4, Table 1): every generated row scored against the held-out ground truth.

    python -m stages.evaluate                    # what dvc repro runs
    emmn evaluate --params params.yaml
Reads data/outputs/frames.zarr (clip ids `<row>/<corpus clip id>`, see pipeline/evaluation/evaluate.py), the corpus
(ground-truth frames, exact landmarks, wavs), the judges data/models/evaluator.pt (train_evaluator) and
the sync scorer data/models/sync_scorer.pt (or `evaluate.sync_weights`, e.g. the official
syncnet_v2.model). Writes data/reports/metrics.json (one object per row: psnr, ssim, m_lmd, f_lmd,
sync_conf, lse_d, emotion_acc), data/reports/table1.md, the per-clip scores
data/reports/metrics_clips.csv and one emotion confusion matrix per row, side by side, in
data/reports/confusion.png. Rows the outputs store lacks are left out and named in the table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer

from pipeline.core.config import BaseParams, EvaluateParams, load_section
from pipeline.core.errors import InputError
from pipeline.core.parallel import dask_client, ordered_map
from pipeline.core.store import atomic_output, write_json, write_text
from pipeline.evaluation.evaluate import plan_tasks, score_output_clip
from pipeline.evaluation.landmark_detect import DlibLandmarks, landmark_detector
from pipeline.evaluation.metrics_report import (
    ROW_LABELS,
    ROWS,
    aggregate_rows,
    table1_markdown,
    write_confusion_sheet,
)
from pipeline.judges.evaluator import load_evaluator
from pipeline.judges.scores import confusion_matrix
from pipeline.lipsync.io import load_syncnet_any
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


def run_evaluate(outputs: Path, corpus_dir: Path, evaluator_path: Path, scorer: Path, metrics_json: Path,
                 table_md: Path, clips_csv: Path, confusion_png: Path, base: BaseParams, p: EvaluateParams,
                 log=print) -> dict:
    """Score every generated clip; write metrics.json, table1.md, the per-clip CSV and the confusion sheet."""
    evaluator = load_evaluator(evaluator_path)  # fail here, in one line, before any worker starts
    loaded = load_syncnet_any(scorer)
    by_dlib = isinstance(landmark_detector(evaluator, p.dlib_predictor, log), DlibLandmarks)
    log(f"evaluate: landmarks by {'dlib' if by_dlib else 'the trained regressor'}")
    tasks, missing = plan_tasks(Path(outputs), Path(corpus_dir), tuple(p.rows), Path(evaluator_path), Path(scorer),
                                p.dlib_predictor)
    if missing:
        log(f"evaluate: no clips of row(s) {missing} in {outputs}; they are left out")
    with dask_client(base.workers, base.scheduler_address) as client:
        per_clip = pd.DataFrame(list(ordered_map(score_output_clip, tasks, client=client,
                                                 window=4 * max(base.workers, 1), description="evaluate: scoring")))
    order = [r for r in ROWS if r in p.rows]
    rows = aggregate_rows(per_clip, order)
    matrices = {ROW_LABELS[r].split(" (")[0]: confusion_matrix(clips.emotion, clips.emotion_pred, evaluator.emotions)
                for r in rows for clips in [per_clip[per_clip.row == r]]}
    write_confusion_sheet(matrices, evaluator.emotions, confusion_png)
    table_md.parent.mkdir(parents=True, exist_ok=True)
    write_text(table_md, table1_markdown(rows, title="Table 1 (held-out actors of the corpus)",
                                        notes=judge_notes(evaluator.metrics, loaded.arch, scorer, per_clip, missing,
                                                          by_dlib)))
    with atomic_output(clips_csv) as tmp:
        per_clip.to_csv(tmp, index=False, float_format="%.6g")
    write_json(metrics_json, rows)
    log(f"evaluate: {len(per_clip)} clips in {len(rows)} rows -> {metrics_json}")
    return rows


def judge_notes(judges: dict, scorer_arch: str, scorer: Path, per_clip: pd.DataFrame, missing: list[str],
                by_dlib: bool = False) -> list[str]:
    """How to read the numbers: the judges' own ceiling and floor, the scorer, what was left out."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    def px(v):
        return "n/a" if v is None else f"{v:.2f} px"

    clips = per_clip.groupby("row").clip_id.nunique()
    notes = [
        f"{int(clips.max())} held-out clips per row ({', '.join(f'{r}: {n}' for r, n in clips.items())}).",
        f"Emotion accuracy: a frame classifier trained on the training actors' real frames (train_evaluator); "
        f"on the held-out actors' real clips it scores {pct(judges.get('emotion_clip_accuracy'))} (the ceiling; "
        f"chance {pct(judges.get('chance_accuracy'))}).",
        "M-LMD / F-LMD: dlib's 68-point predictor on the generated and the ground-truth frames (EAT's protocol; "
        "frames without a face on either side are skipped)." if by_dlib else
        f"M-LMD / F-LMD: landmarks of generated frames from a regressor trained on corpus frames, against the "
        f"exact landmarks; on real held-out frames it is off by M-LMD {px(judges.get('m_lmd_floor'))}, F-LMD "
        f"{px(judges.get('f_lmd_floor'))} (the floor: the ground-truth row).",
        f"Sync_conf (LSE-C) and LSE-D: syncnet_python's offset search with the {scorer_arch} scorer {scorer}; "
        f"values are in that scorer's distance units (comparable within this table, not with papers using "
        f"the official syncnet_v2).",
    ]
    if missing:
        notes.append(f"Not generated, so not in the table: {', '.join(missing)}.")
    if per_clip.sync_offset.notna().any():
        offsets = per_clip.groupby("row").sync_offset.apply(lambda s: float(np.mean(np.abs(s.dropna()))))
        notes.append("Mean |AV offset| (frames): " + ", ".join(f"{r} {v:.1f}" for r, v in offsets.items()) + ".")
    return notes


@app.command()
@one_line_errors
def evaluate(
    params: ParamsOption = Path("params.yaml"),
    outputs: Annotated[Path, typer.Option(help="generated frames store")] = Path("data/outputs/frames.zarr"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    evaluator: Annotated[Path, typer.Option(help="the judges (train_evaluator)")] = Path("data/models/evaluator.pt"),
    scorer: Annotated[Path, typer.Option(help="sync scorer when evaluate.sync_weights is unset")] = Path(
        "data/models/sync_scorer.pt"),
    metrics: Annotated[Path, typer.Option(help="Table 1 rows JSON")] = Path("data/reports/metrics.json"),
    table: Annotated[Path, typer.Option(help="Table 1 markdown")] = Path("data/reports/table1.md"),
    clips: Annotated[Path, typer.Option(help="per-clip scores CSV")] = Path("data/reports/metrics_clips.csv"),
    confusion: Annotated[Path, typer.Option(help="emotion confusion matrices PNG")] = Path(
        "data/reports/confusion.png"),
) -> None:
    """Score every generated row against the held-out ground truth: metrics.json, table1.md, confusion PNG."""
    base, p = load_section("base", params), load_section("evaluate", params)
    if not Path(outputs).exists():
        raise InputError(outputs, "generated outputs not found (run generate first)")
    weights = Path(p.sync_weights) if p.sync_weights else scorer
    rows = run_evaluate(outputs, corpus, evaluator, weights, metrics, table, clips, confusion, base, p)
    typer.echo(json.dumps(rows))


if __name__ == "__main__":
    app()
