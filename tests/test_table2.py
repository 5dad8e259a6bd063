"""`table2` (paper Table 2): the Motion Reconstruction ablations retrained, rendered and scored on the tiny
corpus; each switched-off term really absent from training; identical trainings shared; honest notes."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.core.config import with_field
from pipeline.evaluation.table2 import sheet_indices
from pipeline.evaluation.table2_report import (
    METRICS,
    PER_CLIP_COLUMN,
    comparison_notes,
    paired_difference,
)
from pipeline.motion.ablation import FOMM_ROW, ROW_LABELS, ROW_NAMES, RowPlan, plan_rows
from pipeline.motion.data import KeypointBank, read_pairs, read_sync
from pipeline.training.loop import read_loss_csv, torch_threads
from stages.cli import app
from tests.conftest import ROOT, tiny_params_dict, tiny_section
from tests.motion_fixtures import BASE, motion_inputs  # noqa: F401  (fixture)

runner = CliRunner()
TRAINED = ("no_rec", "no_self", "no_con", "no_filter", "full")


@pytest.fixture(autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def evaluator(tiny_corpus, tmp_path_factory):
    """The tiny judges (train_evaluator's worker on the tiny profile)."""
    from stages.train_evaluator import run_train_evaluator

    out = tmp_path_factory.mktemp("judges")
    with torch_threads(1):
        run_train_evaluator(tiny_corpus, out / "evaluator.pt", out / "evaluator.json", out / "losses.csv",
                            out / "confusion.png", BASE, tiny_section("train_evaluator"))
    return out / "evaluator.pt"


@pytest.fixture(scope="module")
def staged(motion_inputs, evaluator, tmp_path_factory):  # noqa: F811
    """`emmn table2` on the tiny profile; no fine-tuned renderer, so it falls back to the tiny fomm.pt."""
    out = tmp_path_factory.mktemp("table2")
    params = tiny_params_dict()
    params["base"].update(seed=BASE.seed, device="cpu")
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    inputs = motion_inputs
    result = runner.invoke(app, [
        "table2", "--params", str(out / "params.yaml"), "--keypoints", str(inputs["keypoints"]), "--pseudo",
        str(inputs["pseudo"]), "--corpus", str(inputs["corpus"]), "--renderer", str(out / "missing_render.pt"),
        "--fomm", str(inputs["dir"] / "fomm.pt"), "--evaluator", str(evaluator), "--work", str(out / "ablations"),
        "--report", str(out / "table2.json"), "--table", str(out / "table2.md")])
    assert result.exit_code == 0, result.output
    return out


def test_stage_writes_every_row_and_column(staged):
    rows = json.loads((staged / "table2.json").read_text())
    assert list(rows) == list(ROW_NAMES)  # the five ablations in the paper's order, then the FOMM ceiling
    t = tiny_section("table2")
    for name, values in rows.items():
        for metric in METRICS:
            assert isinstance(values[metric], float), (name, metric)
        assert values["clips"] == t.clips and values["frames"] > 0
        assert values["steps"] == (None if name == FOMM_ROW else t.steps)
    # the FOMM row drives the renderer with the targets' own keypoints: no keypoint error at all
    assert rows[FOMM_ROW]["kp_error"] == 0.0 and rows[FOMM_ROW]["kp_error_px"] == 0.0
    assert all(rows[name]["kp_error"] > 0 for name in TRAINED)
    table = (staged / "table2.md").read_text()
    assert "| Method | PSNR ↑ | SSIM ↑ | M-LMD ↓ | F-LMD ↓ |" in table
    for name in ROW_NAMES:
        assert f"| {ROW_LABELS[name]} |" in table
    assert "Self-reconstruction" in table and "missing_render.pt" not in table and "fomm.pt" in table
    assert "Where an ablation matches or beats Ours (full):" in table
    clips = pd.read_csv(staged / "ablations" / "clips.csv")
    assert len(clips) == len(ROW_NAMES) * t.clips
    # every row scored on the same held-out clips
    assert clips.groupby("row").clip_id.apply(frozenset).nunique() == 1
    for name in TRAINED:
        assert (staged / "ablations" / name / "motion.pt").is_file()
        assert json.loads((staged / "ablations" / name / "motion.json").read_text())["model"]["step"] == t.steps
    assert (staged / "ablations" / "sheet.png").stat().st_size > 1000
    # the rows' training timings live beside the DVC output folder, not in it (its md5 must not change per run)
    assert not list((staged / "ablations").rglob("*.timings.json"))
    timings = json.loads((staged / "ablations.timings.json").read_text())
    assert {f"{name}/motion.pt" for name in TRAINED} <= set(timings)


def test_a_switched_off_term_is_not_in_the_trained_loss(staged):
    """Every term is logged unweighted; `total` (what is minimised, Eq. 5) leaves out exactly the row's term."""
    p = tiny_section("train_motion")

    def check(row: str, rec: float, self_rec: float, con: float) -> None:
        log = read_loss_csv(staged / "ablations" / row / "losses.csv")
        assert log
        for r in log:
            expected = (rec * r["rec"] + self_rec * r["self"]
                        + con * (p.lambda_e_con * r["e_con"] + p.lambda_m_con * r["m_con"])
                        + p.lambda_m_center * r["m_center"])  # not an Eq. 5 term: no row switches it off
            assert r["total"] == pytest.approx(expected, rel=1e-5)
            assert r["rec"] > 0 and r["self"] > 0  # logged all the same, so rows stay comparable

    check("full", 1, 1, 1)
    check("no_rec", 0, 1, 1)
    check("no_self", 1, 0, 1)
    check("no_con", 1, 1, 0)
    summary = json.loads((staged / "ablations" / "summary.json").read_text())["rows"]
    # the fixture's sync_filter keeps 3 clips of 4: w/o filter trains on every quadruple, the others on fewer
    assert summary["no_filter"]["quadruples"] == 32 > summary["full"]["quadruples"] == summary["no_rec"]["quadruples"]
    reports = {r: json.loads((staged / "ablations" / r / "motion.json").read_text())["model"] for r in TRAINED}
    assert reports["no_rec"]["use_rec"] is False and reports["full"]["use_rec"] is True
    assert reports["no_filter"]["use_filter"] is False and reports["no_con"]["use_con"] is False
    # one keypoint-space evaluation set for every row (the quadruples the filtered rows never saw)
    cross_sets = {json.loads((staged / "ablations" / r / "motion.json").read_text())["info"]["cross_set"]
                  for r in TRAINED}
    assert len(cross_sets) == 1 and "w/o filter trained on them" in cross_sets.pop()


def test_identical_trainings_are_shared_and_empty_ones_skipped(motion_inputs):  # noqa: F811
    bank = KeypointBank(motion_inputs["keypoints"])
    pairs, sync = read_pairs(motion_inputs["pseudo"]), read_sync(motion_inputs["pseudo"])
    sync_path = motion_inputs["pseudo"] / "sync.parquet"
    t = tiny_section("table2")

    def shared(sync_table, labels: str) -> dict[str, str | None]:
        plans = plan_rows(bank, pairs, sync_table, sync_path, tiny_section("train_motion", labels=labels), t)
        assert [plan.name for plan in plans] == list(ROW_NAMES)
        assert all(plan.trains == (plan.same_as is None) for plan in plans if plan.name != FOMM_ROW)
        return {plan.name: plan.same_as for plan in plans}

    # a filter that keeps every clip removes nothing: "w/o filter" IS the full model, trained once
    assert shared(sync.assign(kept=True), "pseudo") == {**{name: None for name in ROW_NAMES}, "no_filter": "full"}
    # the fixture's filter rejects a clip in 4: with pseudo labels that changes the training set
    assert set(shared(sync, "pseudo").values()) == {None}
    # with 2 sentences every target of every quadruple has its exact counterfactual render: the filter,
    # which only judges re-dub targets, has nothing to judge
    assert shared(sync, "counterfactual")["no_filter"] == "full"
    # a filter that keeps nothing leaves the filtered rows without data: skipped with the reason, not a crash
    nothing = sync.assign(kept=False)
    empty = {plan.name: plan for plan in plan_rows(bank, pairs, nothing, sync_path, tiny_section("train_motion"),
                                                   with_field(t, rows=("full", "no_filter")))}
    assert "none of the" in empty["full"].skipped and empty["no_filter"].trains
    assert list(empty) == ["no_filter", "full"]


def test_notes_name_every_ablation_that_beats_the_full_model():
    # PSNR per clip: full 20, 22; w/o L_self 21, 22.5 (better by 1 and 0.5: mean +0.75, SE 0.25);
    # w/o L_rec below on both; SSIM: w/o L_rec ties the full model; the errors: the full model lowest;
    # emotion: w/o L_self right on both clips, full on one (+0.5 ± 0.5 SE), w/o L_rec on none
    per_clip = pd.DataFrame([
        {"row": row, "clip_id": clip, "psnr": psnr, "ssim": ssim, "emotion_correct": right, "frames": 3,
         **{m: 1.0 if row == "full" else 1.5 for m in ("m_lmd", "f_lmd", "expr_err_mouth", "expr_err_upper",
                                                        "kp_error", "kp_error_px")}}
        for row, clip, psnr, ssim, right in [("full", "a", 20.0, 0.5, True), ("full", "b", 22.0, 0.7, False),
                                             ("no_self", "a", 21.0, 0.4, True), ("no_self", "b", 22.5, 0.5, True),
                                             ("no_rec", "a", 19.0, 0.5, False), ("no_rec", "b", 21.0, 0.7, False)]])
    diff, se, n = paired_difference(per_clip, "no_self", "full", "psnr")
    assert (diff, se, n) == (pytest.approx(0.75), pytest.approx(0.25), 2)
    rows = {name: {m: float(per_clip[per_clip.row == name][PER_CLIP_COLUMN.get(m, m)].astype(float).mean())
                   for m in METRICS}
            for name in ("full", "no_self", "no_rec")}
    plans = [RowPlan("no_rec", None), RowPlan("no_self", None), RowPlan("full", None)]
    notes = "\n".join(comparison_notes(rows, per_clip, plans))
    assert "- PSNR: w/o L_self beats it: 21.75 vs 21.00 (paired difference +0.750 ± 0.250 SE over 2 clips)." in notes
    assert "- SSIM: w/o L_rec ties it (0.6000)." in notes
    assert "w/o L_rec beats" not in notes
    assert ("- emotion acc: w/o L_self beats it: 1.000 vs 0.500 (paired difference +0.5000 ± 0.5000 SE over 2 "
            "clips).") in notes
    assert ("Ours (full) is best of the trained rows on: M-LMD, F-LMD, expr err mouth, expr err upper, (p, j) "
            "error, keypoint px.") in notes
    assert math.isnan(paired_difference(per_clip, "no_con", "full", "psnr")[0])


def test_sheet_clips_are_spread_over_the_selection():
    assert sheet_indices(24, 4) == [0, 8, 15, 23]  # linspace(0, 23, 4) = 0, 7.67, 15.33, 23
    assert sheet_indices(2, 4) == [0, 1] and sheet_indices(0, 4) == [] and sheet_indices(5, 0) == []


def test_unknown_row_is_a_one_line_error(tmp_path):
    params = tiny_params_dict()
    params["table2"]["rows"] = ["full", "w/o everything"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "fomm.pt").write_bytes(b"")
    result = runner.invoke(app, ["table2", "--params", str(tmp_path / "params.yaml"), "--keypoints",
                                 str(tmp_path / "none.zarr"), "--renderer", str(tmp_path / "fomm.pt"),
                                 "--evaluator", str(tmp_path / "none.pt")])
    assert result.exit_code == 2
    assert "table2.rows: unknown row(s) ['w/o everything']" in result.output


def test_dvc_stage_reads_train_motion_params_and_lists_existing_code():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["table2"]
    sections = {p.split(".")[0] for p in stage["params"]}  # exact keys of each section it reads
    assert {"base.seed", "base.device", "train_motion.labels", "table2.rows"} <= set(stage["params"])
    assert {"base", "train_motion", "table2"} <= sections
    for dep in stage["deps"]:
        if not dep.startswith("data/"):
            assert (ROOT / dep).is_file(), dep
    assert {"data/features/keypoints.zarr", "data/models/evaluator.pt", "data/corpus"} <= set(stage["deps"])
    assert "data/ablations/motion" in stage["outs"]
    assert stage["metrics"] == [{"data/reports/table2.json": {"cache": False}}]
    assert np.all([tiny_section("table2").steps < 10, tiny_section("table2").clips <= 2])
