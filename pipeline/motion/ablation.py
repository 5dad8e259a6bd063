"""Paper Table 2 ("Ablation study for Motion Reconstruction"): which rows, trained how.

Each row is `train_motion` run through the stage's worker with every switch on except the row's one
(full, w/o L_rec, w/o L_self, w/o L_e/m-con, w/o filter), for `table2.steps` steps; every other
hyperparameter is the train_motion section's. `plan_rows` resolves each row's training set first: a row
whose training would be identical to the full model's (same quadruples in the same order, same label
weights, same params apart from the switch that selected them) is not trained again but shares its
model; that happens to "w/o filter" when sync_filter keeps every clip it judges. A row whose training
set is empty (e.g. "full" with pseudo labels when sync_filter kept no pseudo clip) is skipped with the
reason. `train_row` trains one row and measures it in keypoint space (motion.json's numbers,
pipeline/motion/report.py, f_e / f_m computed in memory instead of through decompose).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.config import (
    BaseParams,
    MotionReportParams,
    Table2Params,
    TrainMotionParams,
    as_dict,
    with_field,
)
from pipeline.core.errors import InputError
from pipeline.core.store import write_json
from pipeline.corpus.manifest import read_manifest
from pipeline.models.motion import MotionNet, encode_frames, load_motion
from pipeline.motion.data import KeypointBank
from pipeline.motion.report import build_motion_report
from pipeline.motion.train import loss_weights, training_quadruples

# (name, label, params changed from the full model); the full model has every switch on
TABLE2_ROWS: tuple[tuple[str, str, dict[str, bool]], ...] = (
    ("no_rec", "w/o L_rec", {"use_rec": False}),
    ("no_self", "w/o L_self", {"use_self": False}),
    ("no_con", "w/o L_e/m-con", {"use_con": False}),
    ("no_filter", "w/o filter", {"use_filter": False}),
    ("full", "Ours (full)", {}),
)
FULL = {"use_rec": True, "use_self": True, "use_con": True, "use_filter": True}
FOMM_ROW = "fomm_keypoints"  # no Motion Reconstruction: the target's own E_k keypoints (the renderer's ceiling)
ROW_LABELS = {**{name: label for name, label, _ in TABLE2_ROWS},
              FOMM_ROW: "Keypoints straight from FOMM (E_k of the target frame)"}
ROW_NAMES = tuple(ROW_LABELS)


@dataclass(frozen=True)
class RowPlan:
    """One Table 2 row: its train_motion params (None for the FOMM row) and how it is obtained."""

    name: str
    params: TrainMotionParams | None
    quadruples: int = 0
    same_as: str | None = None  # an earlier row whose training is identical: its model is reused
    skipped: str | None = None  # why the row cannot be trained

    @property
    def label(self) -> str:
        return ROW_LABELS[self.name]

    @property
    def trains(self) -> bool:
        return self.params is not None and self.same_as is None and self.skipped is None


def row_params(p: TrainMotionParams, t: Table2Params, changes: dict[str, bool]) -> TrainMotionParams:
    """train_motion's params with every switch on but the row's, and table2's step budget."""
    return with_field(p, **{**FULL, **changes, "resume": False, "steps": t.steps, "max_minutes": t.max_minutes})


def training_signature(p: TrainMotionParams, chosen: pd.DataFrame, weight: dict[str, np.ndarray] | None) -> str:
    """Equal for two rows exactly when their training runs are identical: the same quadruples in the same
    order and the same label weights (what `use_filter` decides) and the same params apart from `use_filter`."""
    params = {k: v for k, v in as_dict(p).items() if k != "use_filter"}
    data = chosen[["x_ia", "x_jb", "y_ib", "y_ja"]].to_numpy().tolist()
    weights = None if weight is None else {k: np.asarray(v, np.float64).tolist() for k, v in sorted(weight.items())}
    if weights is not None and all(min(v, default=1.0) == 1.0 for v in weights.values()):
        weights = None  # every label trusted: the same as no weights
    return hashlib.sha256(json.dumps([params, data, weights]).encode()).hexdigest()


def check_rows(t: Table2Params) -> None:
    unknown = sorted(set(t.rows) - set(ROW_NAMES))
    if unknown:
        raise InputError("params.yaml", f"table2.rows: unknown row(s) {unknown}; known: {list(ROW_NAMES)}")


def plan_rows(bank: KeypointBank, pairs: pd.DataFrame, sync: pd.DataFrame | None, sync_path: str | Path,
              p: TrainMotionParams, t: Table2Params) -> list[RowPlan]:
    """The requested rows in table order (ablations, full, then the FOMM row)."""
    check_rows(t)
    plans, seen = {}, {}
    # the full model first, so that a row identical to it shares the full model's training, not vice versa
    for name, _, changes in sorted(TABLE2_ROWS, key=lambda row: row[0] != "full"):
        if name not in t.rows:
            continue
        row_p = row_params(p, t, changes)
        try:
            chosen, weight = training_quadruples(pairs, sync, row_p, sync_path, bank)
        except InputError as exc:
            plans[name] = RowPlan(name, row_p, skipped=exc.problem)
            continue
        signature = training_signature(row_p, chosen, weight)
        plans[name] = RowPlan(name, row_p, len(chosen), same_as=seen.get(signature))
        seen.setdefault(signature, name)
    if FOMM_ROW in t.rows:
        plans[FOMM_ROW] = RowPlan(FOMM_ROW, None)
    return [plans[name] for name in ROW_NAMES if name in plans]


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


def train_row(plan: RowPlan, kp_store: Path, bank: KeypointBank, pseudo_dir: Path, corpus_dir: Path, out_dir: Path,
              base: BaseParams, report_params: MotionReportParams, cross_set: tuple[pd.DataFrame, str], log=print
              ) -> tuple[MotionNet, dict[str, Any]]:
    """Train one row into out_dir (motion.pt, losses.csv, motion.json); return the model and its
    keypoint-space report (motion.json: `cross_set` is one evaluation set shared by every row)."""
    from pipeline.motion.train import run_train_motion

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = loss_weights(plan.params)
    log(f"table2: {plan.label}: Eq. 5 weights {weights}, {plan.quadruples} quadruples, {plan.params.steps} steps")
    run_train_motion(kp_store, pseudo_dir, out_dir / "motion.pt", out_dir / "losses.csv", base, plan.params, log=log)
    net = load_motion(out_dir / "motion.pt")
    f_e, f_m = corpus_features(net, bank, read_manifest(corpus_dir))
    pairs, description = cross_set
    clips = pd.read_parquet(Path(pseudo_dir) / "clips.parquet")
    report = build_motion_report(net, bank, f_e, f_m, corpus_dir, pairs, None, clips, report_params,
                                 (pairs, description))
    write_json(out_dir / "motion.json", report)
    return net, report


__all__ = ["FOMM_ROW", "FULL", "ROW_LABELS", "ROW_NAMES", "RowPlan", "TABLE2_ROWS", "check_rows", "corpus_features",
           "plan_rows", "row_params", "train_row", "training_signature"]
