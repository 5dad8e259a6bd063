"""`evaluate` on a fake outputs store built from the tiny corpus: the two rows that need no model
(ground truth = the real frames, static = the actor's neutral reference frame repeated)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.core.store import ArraySpec, RaggedStoreWriter, open_store
from pipeline.evaluation.metrics_report import METRICS
from pipeline.judges.evaluator import JUDGED_CONTROLS, MOUTH_JUDGED
from stages.cli import app
from tests.conftest import tiny_params_dict
from tests.test_evaluator import trained  # noqa: F401  (fixture: the tiny judges, every held-out frame scored)

runner = CliRunner()


def fake_outputs(corpus, path, rows=("ground_truth", "static")) -> list[str]:
    """An outputs store per the contract: `<row>/<clip>` ids, each as long as its corpus clip."""
    manifest = pd.read_parquet(corpus / "manifest.parquet")
    clips = manifest[(manifest.split == "test") & (manifest.kind == "real")]
    store = open_store(corpus / "frames.zarr")
    actors = [str(a) for a in store["reference_actor"][:]]
    ids, blocks = [], []
    for row in rows:
        for clip in clips.itertuples():
            frames = store["frames"][clip.start:clip.stop]
            if row == "static":
                frames = np.repeat(store["reference_frames"][actors.index(clip.actor)][None], len(frames), axis=0)
            ids.append(f"{row}/{clip.clip_id}")
            blocks.append(frames)
    size = blocks[0].shape[1]
    writer = RaggedStoreWriter(path, ids, [len(b) for b in blocks],
                               {"frames": ArraySpec((size, size, 3), "uint8", ("y", "x", "rgb"))},
                               attrs={"stage": "test"}, chunk_frames=16, shard_frames=256)
    for i, block in enumerate(blocks):
        writer.write_clip(i, {"frames": block})
    writer.close()
    return ids


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    """A seeded, untrained SyncNet_color checkpoint: sync numbers are computed, not meaningful."""
    from pipeline.lipsync.io import lipsync_config
    from pipeline.models.syncnet_color import SyncNetColor, SyncNetColorConfig
    from pipeline.training.loop import save_training_state

    torch.manual_seed(0)
    model = SyncNetColor(SyncNetColorConfig.scaled(0.125))
    path = tmp_path_factory.mktemp("scorer") / "sync_scorer.pt"
    save_training_state(path, modules={"syncnet_color": model},
                        config=lipsync_config("syncnet_color", model.config, 25.0, "reflect"), step=0)
    return path


@pytest.fixture(scope="module")
def evaluated(tiny_corpus, trained, scorer, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("evaluate")
    fake_outputs(tiny_corpus, out / "frames.zarr")
    params = tiny_params_dict()
    params["evaluate"] = {"rows": ["ground_truth", "static", "emmn"]}  # emmn: not generated here
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    result = runner.invoke(app, [
        "evaluate", "--params", str(out / "params.yaml"), "--outputs", str(out / "frames.zarr"), "--corpus",
        str(tiny_corpus), "--evaluator", str(trained[0] / "evaluator.pt"), "--scorer", str(scorer), "--metrics",
        str(out / "metrics.json"), "--table", str(out / "table1.md"), "--clips", str(out / "clips.csv"),
        "--confusion", str(out / "confusion.png")])
    assert result.exit_code == 0, result.output
    return out, json.loads((trained[0] / "evaluator.json").read_text())


def test_metrics_json_has_the_rows_and_keys_the_issue_names(evaluated):
    out, _ = evaluated
    rows = json.loads((out / "metrics.json").read_text())
    assert list(rows) == ["ground_truth", "static"]
    assert all(list(values) == [*METRICS, "expr_err_by_control"] for values in rows.values())
    gt, static = rows["ground_truth"], rows["static"]
    # the expression judge, control by control (a 6-step judge: the numbers are only plumbing here)
    assert set(gt["expr_err_by_control"]) == set(JUDGED_CONTROLS)
    assert all(v[k] > 0 for v in rows.values() for k in ("expr_err_mouth", "expr_err_upper"))
    assert gt["psnr"] is None and gt["ssim"] == 1.0  # PSNR of identical clips cannot apply
    assert static["psnr"] is not None and 5 < static["psnr"] < 40 and static["ssim"] < 0.95
    assert all(isinstance(v[k], float) for v in rows.values() for k in ("sync_conf", "lse_d"))
    assert static["m_lmd"] > 0 and static["f_lmd"] > 0


def test_ground_truth_row_equals_the_judges_ceiling_and_floor(evaluated):
    """Real frames scored by evaluate give exactly what train_evaluator reports on the same clips."""
    out, judges = evaluated
    gt = json.loads((out / "metrics.json").read_text())["ground_truth"]
    mae = judges["expression_mae"]
    # the judge's own floor on the same frames (a frame mean there, a mean of clip means here)
    assert gt["expr_err_mouth"] == pytest.approx(np.mean([mae[c] for c in MOUTH_JUDGED]), rel=0.3)
    assert gt["m_lmd"] == pytest.approx(judges["m_lmd_floor"], abs=1e-3)
    assert gt["f_lmd"] == pytest.approx(judges["f_lmd_floor"], abs=1e-3)
    assert gt["emotion_acc"] == pytest.approx(judges["emotion_clip_accuracy"], abs=1e-4)


def test_table_clips_and_confusion_sheet(evaluated, tiny_corpus):
    out, _ = evaluated
    table = (out / "table1.md").read_text()
    assert "| Ground truth |" in table and "| Static reference frame |" in table and "EMMN |" not in table
    assert "Not generated, so not in the table: emmn." in table and "ceiling" in table
    clips = pd.read_csv(out / "clips.csv")
    manifest = pd.read_parquet(tiny_corpus / "manifest.parquet")
    n_test = int(((manifest.split == "test") & (manifest.kind == "real")).sum())
    assert len(clips) == 2 * n_test and set(clips.row) == {"ground_truth", "static"}
    assert {"psnr", "ssim", "m_lmd", "f_lmd", "sync_conf", "lse_d", "sync_offset", "emotion_pred"} <= set(clips)
    sheet = cv2.imread(str(out / "confusion.png"))
    assert sheet is not None and sheet.shape[1] > 2 * sheet.shape[0] * 0.8  # two matrices side by side


def test_bad_outputs_are_one_line_errors(tiny_corpus, trained, scorer, tmp_path):  # noqa: F811
    from pipeline.core.errors import InputError
    from pipeline.evaluation.evaluate import plan_tasks

    missing = runner.invoke(app, ["evaluate", "--outputs", str(tmp_path / "none.zarr"), "--corpus", str(tiny_corpus)])
    assert missing.exit_code == 2 and "run generate first" in missing.output
    store = tmp_path / "frames.zarr"
    writer = RaggedStoreWriter(store, ["emmn/NOT_A_CLIP"], [3],
                               {"frames": ArraySpec((64, 64, 3), "uint8", ("y", "x", "c"))},
                               attrs={}, chunk_frames=16, shard_frames=256)
    writer.write_clip(0, {"frames": np.zeros((3, 64, 64, 3), np.uint8)})
    writer.close()
    with pytest.raises(InputError, match="not in the corpus"):
        plan_tasks(store, tiny_corpus, ("emmn",), trained[0] / "evaluator.pt", scorer, None)
    with pytest.raises(InputError, match="unknown row"):
        plan_tasks(store, tiny_corpus, ("best",), trained[0] / "evaluator.pt", scorer, None)
