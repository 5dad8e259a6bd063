"""`table2` stage (paper Table 2): the Motion Reconstruction ablations, retrained and rendered on held-out actors.

    python -m stages.table2                      # what dvc repro runs
    emmn table2 --params params.yaml
Trains full, w/o L_rec, w/o L_self, w/o L_e/m-con and w/o filter (pipeline/motion/ablation.py: one
train_motion switch off each, `table2.steps` steps, every other hyperparameter from train_motion), then
renders each row's self-reconstructions of held-out frames through the renderer (data/models/emmn_render.pt,
else data/models/fomm.pt) next to the target's own E_k keypoints rendered (the renderer's ceiling), and
scores them against the real frames (pipeline/evaluation/table2.py says exactly how). Writes data/reports/table2.json
(one object per row: psnr, ssim, m_lmd, f_lmd, kp_error, kp_error_px, steps, clips, frames),
data/reports/table2.md, and data/ablations/motion/ (per row: motion.pt, losses.csv, motion.json;
clips.csv with every clip's scores; sheet.png).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

from pipeline.core.config import (
    BaseParams,
    MotionReportParams,
    Table2Params,
    TrainMotionParams,
    load_section,
)
from pipeline.core.errors import InputError
from pipeline.core.parallel import dask_client, ordered_map
from pipeline.core.store import atomic_output, open_store, write_json, write_text
from pipeline.core.timings import pop_timings, write_timings
from pipeline.corpus.manifest import read_manifest
from pipeline.evaluation.landmark_detect import DlibLandmarks, landmark_detector
from pipeline.evaluation.table2 import (
    RowTask,
    cached_renderer,
    check_same_keypoint_detector,
    reference_frames,
    run_row,
    select_clips,
    sheet_indices,
)
from pipeline.evaluation.table2_report import row_table, table_markdown, write_sheet
from pipeline.judges.evaluator import load_evaluator
from pipeline.motion.ablation import (
    FOMM_ROW,
    ROW_LABELS,
    RowPlan,
    check_rows,
    plan_rows,
)
from pipeline.motion.data import KeypointBank, read_pairs
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


def pick_renderer(renderer: Path, fomm: Path) -> Path:
    """The fine-tuned renderer when finetune_render has written it, else the FOMM it started from."""
    if Path(renderer).is_file():
        return Path(renderer)
    if Path(fomm).is_file():
        return Path(fomm)
    raise InputError(renderer, f"no renderer: neither this nor {fomm} exists (run finetune_render or train_fomm)")


def run_table2(kp_store: Path, pseudo_dir: Path, corpus_dir: Path, renderer: Path, fomm: Path, evaluator: Path,
               work_dir: Path, report_json: Path, table_md: Path, base: BaseParams, p: TrainMotionParams,
               report_params: MotionReportParams, t: Table2Params, log=print) -> dict[str, Any]:
    """Train, render and score every row of `t.rows`; write the table, its JSON and work_dir. Returns table2.json."""
    check_rows(t)
    renderer = pick_renderer(renderer, fomm)
    judges = load_evaluator(evaluator)  # fail here, in one line, before any training
    by_dlib = isinstance(landmark_detector(judges, t.dlib_predictor, log), DlibLandmarks)
    bank = KeypointBank(kp_store)
    pairs = read_pairs(pseudo_dir)
    sync_path = Path(pseudo_dir) / "sync.parquet"
    sync = pd.read_parquet(sync_path) if sync_path.is_file() else None
    plans = plan_rows(bank, pairs, sync, sync_path, p, t)
    if not any(plan.trains or plan.name == FOMM_ROW for plan in plans):
        raise InputError("params.yaml", "table2: no row can be rendered: " + "; ".join(
            f"{plan.label}: {plan.skipped}" for plan in plans if plan.skipped))
    clips = select_clips(read_manifest(corpus_dir), bank, t.clips)
    references = reference_frames(corpus_dir)
    gap = check_same_keypoint_detector(cached_renderer(str(renderer), renderer.stat().st_mtime), renderer, bank,
                                       references)
    for plan in plans:
        state = (f"skipped: {plan.skipped}" if plan.skipped else f"= {plan.same_as} (identical training)"
                 if plan.same_as else "trained" if plan.params else "no training")
        log(f"table2: {plan.label}: {state}")
    with atomic_output(work_dir) as tmp:
        tasks = [RowTask(plan, clips, str(kp_store), str(pseudo_dir), str(corpus_dir), str(tmp / plan.name),
                         str(renderer), str(evaluator), base, report_params, t, p.labels,
                         any(plan.name == "no_filter" and plan.trains for plan in plans))
                 for plan in plans if plan.trains or plan.name == FOMM_ROW]
        with dask_client(base.workers, base.scheduler_address) as client:
            results = {r["row"]: r for r in ordered_map(run_row, tasks, client=client,
                                                        window=2 * max(base.workers, 1), description="table2: rows")}
        for plan in plans:  # a row trained like an earlier one shares its results
            if plan.same_as:
                results[plan.name] = {**results[plan.same_as], "row": plan.name,
                                      "per_clip": [{**c, "row": plan.name} for c in results[plan.same_as]["per_clip"]]}
        per_clip = pd.DataFrame([c for plan in plans if plan.name in results for c in results[plan.name]["per_clip"]])
        per_clip.to_csv(tmp / "clips.csv", index=False, float_format="%.6g")
        corpus_frames = open_store(Path(corpus_dir) / "frames.zarr")["frames"]
        shown = [clips[i] for i in sheet_indices(len(clips), t.sheet_clips)]
        truth = [np.asarray(corpus_frames[c.frame_start + int(c.frame_indices(t.frame_stride)[
            len(c.frame_indices(t.frame_stride)) // 2])]) for c in shown]
        write_sheet(tmp / "sheet.png", truth, {plan.name: results[plan.name]["sheet"] for plan in plans
                                               if plan.name in results}, [f"{c.emotion} l{c.level}" for c in shown])
        steps = {name: r["train"].get("steps") for name, r in results.items()}
        rows = row_table(per_clip, plans, steps)
        reports = {plan.name: results[plan.name]["report"] for plan in plans if plan.name in results}
        setup = setup_notes(plans, clips, per_clip, renderer, gap, judges.metrics, by_dlib, p, t, steps)
        (tmp / "summary.json").write_text(json.dumps({
            "renderer": str(renderer), "clips": [c.clip_id for c in clips], "frame_stride": t.frame_stride,
            "rows": {plan.name: {"label": plan.label, "same_as": plan.same_as, "skipped": plan.skipped,
                                 "quadruples": plan.quadruples, **results.get(plan.name, {}).get("train", {})}
                     for plan in plans}}, indent=2) + "\n")
        timings = pop_timings(tmp)  # inside work_dir (a DVC output) they would change its md5 on every run
    write_timings(work_dir, timings)
    table_md.parent.mkdir(parents=True, exist_ok=True)
    write_text(table_md, table_markdown(rows, plans, per_clip, reports, setup))
    write_json(report_json, rows)
    log(f"table2: {len(rows)} rows -> {table_md}, {report_json}")
    return rows


def _share(per_clip: pd.DataFrame) -> str:
    """The judge's accuracy on the real frames of the scored clips (the same for every row)."""
    real = per_clip.drop_duplicates("clip_id").emotion_correct_real.astype(float)
    return f"{real.mean():.3f} ({int(real.sum())} of {len(real)} clips)" if len(real) else "n/a"


def setup_notes(plans: list[RowPlan], clips: list, per_clip: pd.DataFrame, renderer: Path, gap: float,
                judges: dict, by_dlib: bool, p: TrainMotionParams, t: Table2Params, steps: dict) -> list[str]:
    """How the numbers were made, in the table's words."""
    actors = sorted({c.actor for c in clips})
    frames = per_clip.groupby("row").frames.sum()

    def px(key: str) -> str:
        value = judges.get(key)
        return "n/a" if value is None else f"{value:.2f}"

    # emmn_render.pt's step is finetune_render's (0: fomm.pt's renderer passed through)
    fine_tuned = renderer.name != "fomm.pt" and cached_renderer(str(renderer), renderer.stat().st_mtime).step > 0
    notes = [
        f"Measured on {len(clips)} held-out clips ({len(actors)} held-out actor{'s' * (len(actors) != 1)}: "
        f"{', '.join(actors)}; spread over "
        f"emotions and levels), every {t.frame_stride}th frame ({int(frames.max())} frames per row). "
        "Self-reconstruction, as the paper's caption says: f_e and f_m of the same frame, decoded with the actor's "
        "neutral keypoints (p_neu, j_neu) and rendered from the actor's neutral reference frame. The corpus has no "
        "exact cross-reconstruction target for held-out actors (its counterfactual renders exist for training "
        "actors only, and another emotion's take of the same sentence differs in timing), so none is scored here.",
        f"Renderer: {renderer}" + (" (finetune_render's generator, fine-tuned on EmmnNet-driven frames"
                                   if fine_tuned else " (train_fomm's, not fine-tuned") + "; the same for every row)"
        + f"; its E_k matches keypoints.zarr's (reference keypoints within {gap:.1e}).",
        "M-LMD / F-LMD: dlib's 68 points on rendered and real frames." if by_dlib else
        "M-LMD / F-LMD: the evaluator's landmark regressor on the rendered frames against the corpus's exact "
        f"landmarks; on real held-out frames it is itself off by M-LMD {px('m_lmd_floor')}, F-LMD {px('f_lmd_floor')} "
        "px, so LMD differences well below that are hard to read.",
        "Emotion acc: share of clips whose rendered frames the evaluator's emotion classifier (train_evaluator) "
        "puts in the clip's emotion (argmax of the mean logits, as Table 1); on the real frames of these clips it "
        f"scores {_share(per_clip)}, so the FOMM row's number is what the renderer keeps of the emotion.",
        "(p, j) error: mean over keypoints of sqrt(|dp|² + |dj|²) of the decoded keypoints against E_k of the "
        "frame (train_motion's distance); keypoint px: the position part in pixels of the renderer's input. Both "
        "are 0 for the FOMM row by construction.",
        f"Training: each row {t.steps} train_motion steps (batch {p.batch_size}, lr {p.lr}, labels {p.labels}, "
        f"lambda_e-con {p.lambda_e_con}, lambda_m-con {p.lambda_m_con}; every other hyperparameter from train_motion), "
        f"the same seed, one thread; not data/models/motion.pt (train_motion's own run of {p.steps} steps).",
    ]
    short = [f"{plan.label} {steps[plan.name]}" for plan in plans if steps.get(plan.name) is not None
             and steps[plan.name] < t.steps]
    if short:
        notes.append(f"Stopped by the {t.max_minutes}-minute guard before {t.steps} steps: {', '.join(short)}.")
    for plan in plans:
        if plan.same_as:
            notes.append(f"{plan.label} trains exactly like {ROW_LABELS[plan.same_as]} (the same {plan.quadruples} "
                         "quadruples in the same order, the same label weights): one training, the same numbers, "
                         "so it neither wins nor loses.")
        if plan.skipped:
            notes.append(f"{plan.label} was not trained: {plan.skipped}.")
    notes.append("Differences smaller than about twice their paired standard error are within the spread of these "
                 "clips. The paper's numbers (MEAD, 256 px, official FOMM) are not comparable with these.")
    return notes


@app.command()
@one_line_errors
def table2(
    params: ParamsOption = Path("params.yaml"),
    keypoints: Annotated[Path, typer.Option(help="keypoint store (corpus + pseudo clips)")] = Path(
        "data/features/keypoints.zarr"),
    pseudo: Annotated[Path, typer.Option(help="pseudo_pairs folder (pairs, sync, clips)")] = Path("data/pseudo"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    renderer: Annotated[Path, typer.Option(help="renderer (fomm.pt layout)")] = Path("data/models/emmn_render.pt"),
    fomm: Annotated[Path, typer.Option(help="renderer when --renderer does not exist")] = Path("data/models/fomm.pt"),
    evaluator: Annotated[Path, typer.Option(help="the judges (train_evaluator)")] = Path("data/models/evaluator.pt"),
    work: Annotated[Path, typer.Option(help="per-row models, losses, clip scores, sheet")] = Path(
        "data/ablations/motion"),
    report: Annotated[Path, typer.Option(help="Table 2 rows JSON")] = Path("data/reports/table2.json"),
    table: Annotated[Path, typer.Option(help="Table 2 markdown")] = Path("data/reports/table2.md"),
) -> None:
    """Train the Table 2 ablations of Motion Reconstruction, render held-out frames, score them: table2.md/json."""
    sections = {name: load_section(name, params) for name in ("base", "train_motion", "motion_report", "table2")}
    rows = run_table2(keypoints, pseudo, corpus, renderer, fomm, evaluator, work, report, table, sections["base"],
                      sections["train_motion"], sections["motion_report"], sections["table2"])
    typer.echo(json.dumps(rows))


if __name__ == "__main__":
    app()
