"""pretrain_mouth (paper §4.1, Audio2Mouth pre-training on the wide set): its output is audio.pt with a trained E_c
(and nothing else changed), seeded, read by train_memory; bad params and inputs are one-line errors."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from pipeline.core.config import BaseParams, with_field
from pipeline.core.errors import InputError
from pipeline.memory.pretrain import memory_params_for_pretraining, pretrain_mouth
from pipeline.models.audio import load_audio_encoders
from pipeline.training.loop import read_loss_csv, torch_threads
from stages.pretrain_mouth import app
from stages.train_memory import run_train_memory
from tests.conftest import tiny_section
from tests.memory_fixtures import wide_memory_inputs

BASE = BaseParams(seed=3, device="cpu", workers=0)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return wide_memory_inputs(tmp_path_factory.mktemp("pretrain_mouth"))


def run(s, out_dir, **changes):
    p = with_field(tiny_section("pretrain_mouth"), **{"max_minutes": 0, "steps": 6, **changes})
    out, csv = out_dir / "audio_mouth.pt", out_dir / "losses.csv"
    with torch_threads(1):
        report = pretrain_mouth(s["corpus"], s["keypoints"], s["motion"], s["audio"], s["audio_model"],
                                s["motion_model"], s["wide_inputs"], out, csv, BASE, p, tiny_section("train_memory"),
                                prosody_store=s["prosody"])
    return report, out, csv


def test_pretraining_changes_only_the_content_encoder_and_is_seeded(stores, tmp_path):
    report, out, csv = run(stores, tmp_path)
    before, after = load_audio_encoders(stores["audio_model"]), load_audio_encoders(out)  # loads as audio.pt does
    old, new = before.state_dict(), after.state_dict()
    moved = {k for k in old if not torch.equal(old[k], new[k])}
    assert moved and all(k.startswith("con_encoder.") for k in moved)
    # E_c's BatchNorm statistics stay train_audio's (eval mode throughout)
    assert not any(k.endswith(("running_mean", "running_var")) for k in moved)
    assert report["heldout"]["clips"] == 6 and report["wide_heldout"]["clips"] == 2
    for part in ("heldout", "wide_heldout", "train"):
        assert report[part]["mouth_err"] > 0 and report[part]["mouth_err_mean_predictor"] > 0
    assert report["heldout"]["ratio_to_mean_predictor"] == pytest.approx(
        report["heldout"]["mouth_err"] / report["heldout"]["mouth_err_mean_predictor"], abs=1e-4)
    assert len(read_loss_csv(csv)) > 0
    (tmp_path / "again").mkdir()
    _, again, _ = run(stores, tmp_path / "again")
    assert all(torch.equal(v, load_audio_encoders(again).state_dict()[k]) for k, v in new.items())
    # train_memory hears through the pre-trained E_c
    memory = with_field(tiny_section("train_memory"), max_minutes=0)
    result = run_train_memory(stores["corpus"], stores["keypoints"], stores["motion"], stores["audio"], out,
                              stores["motion_model"], tmp_path / "emmn.pt", tmp_path / "m.json", tmp_path / "m.csv",
                              BASE, memory, prosody_store=stores["prosody"], wide=stores["wide_inputs"])
    assert result["heldout"]["clips"] > 0


def test_without_a_wide_set_every_step_is_the_corpus(stores, tmp_path):
    s = {**stores, "wide_inputs": None}
    report, _, _ = run(s, tmp_path, steps=2)
    assert report["info"]["corpus_share"] == 1.0 and report["wide_heldout"]["clips"] == 0


def test_the_memory_layout_comes_from_train_memory():
    p = tiny_section("pretrain_mouth")
    mp = memory_params_for_pretraining(tiny_section("train_memory", hidden=24), p)
    assert mp.hidden == 24 and mp.window == p.window and mp.batch_size == p.batch_size and mp.variant == "emmn"
    assert not mp.tune_content and mp.cross_actor_emotion == 0


def test_bad_share_and_missing_input_are_one_line_errors(stores, tmp_path):
    with pytest.raises(InputError, match="corpus_share must lie in"):
        run(stores, tmp_path, corpus_share=1.5)
    params = tmp_path / "params.yaml"
    params.write_text("pretrain_mouth:\n  steps: 2\n")
    result = CliRunner().invoke(app, ["--params", str(params), "--corpus", str(stores["corpus"]),
                                      "--audio-model", str(tmp_path / "absent.pt"),
                                      "--out", str(tmp_path / "audio_mouth.pt")])
    assert result.exit_code == 2 and "absent.pt" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "audio_mouth.pt").exists()
