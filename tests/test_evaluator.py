"""`train_evaluator`: the judges of `evaluate` (emotion classifier, 68-point landmarks) on the tiny corpus;
the state round trip pseudo_pairs hands its workers; the dlib / regressor landmark detector choice."""

from __future__ import annotations

import json
import sys
import types

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.core.errors import CheckpointError, InputError
from pipeline.core.store import open_store
from pipeline.evaluation.landmark_detect import DlibLandmarks, landmark_detector
from pipeline.judges.evaluator import JUDGED_CONTROLS, load_evaluator
from pipeline.judges.scores import f_lmd, m_lmd
from stages.cli import app
from tests.conftest import tiny_params_dict, tiny_section
from tests.resume_helpers import Killed, kill_at, same_weights

runner = CliRunner()
OUTPUTS = ("evaluator.pt", "evaluator.json", "losses.csv", "confusion.png")


def stage_args(out) -> list[str]:
    return ["--out", str(out / "evaluator.pt"), "--report", str(out / "evaluator.json"), "--losses",
            str(out / "losses.csv"), "--confusion", str(out / "confusion.png")]


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    """The stage run through the CLI on the tiny profile (every held-out frame scored)."""
    out = tmp_path_factory.mktemp("evaluator")
    params = tiny_params_dict()
    params["train_evaluator"]["eval_stride"] = 1
    params["train_evaluator"]["pretrain_wide"] = False  # the corpus alone (tests/test_wide.py adds the wide set)
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    result = runner.invoke(app, ["train_evaluator", "--params", str(out / "params.yaml"), "--corpus", str(tiny_corpus),
                                 *stage_args(out)])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output.strip().splitlines()[-1])


def test_stage_writes_checkpoint_report_losses_and_confusion(trained):
    out, summary = trained
    assert all((out / name).is_file() for name in OUTPUTS)
    report = json.loads((out / "evaluator.json").read_text())
    assert summary["steps"] == report["steps"] == 6 and report["stopped_by"] == "steps"
    assert list(report["emotion_clip_accuracy_by_emotion"]) == ["happy", "neutral", "sad", "surprised"]
    assert load_evaluator(out / "evaluator.pt").emotions == ("neutral", "happy", "sad", "surprised")  # MEAD order
    for key in ("emotion_frame_accuracy", "emotion_clip_accuracy", "emotion_clip_accuracy_majority"):
        assert 0.0 <= report[key] <= 1.0
    assert report["chance_accuracy"] == 0.25 and report["test_clips"] == 4
    assert set(report["emotion_clip_accuracy_by_level"]) == {"1", "3"}
    assert report["landmark_error_px"] > 0 and report["mouth_error_px"] > 0
    assert 0 < report["m_lmd_floor"] and 0 < report["f_lmd_floor"] <= report["landmark_error_px"] * 1.5
    header = (out / "losses.csv").read_text().splitlines()[0]
    # no wall-clock column (reruns same bytes)
    assert header == "step,emotion_ce,train_accuracy,landmark_smooth_l1,controls_smooth_l1"
    assert set(report["expression_r2"]) == set(JUDGED_CONTROLS) == set(report["expression_mae"])
    assert report["reference_judged_neutral"] in (0.0, 1.0)  # one held-out actor's neutral photo
    assert load_evaluator(out / "evaluator.pt").control_names == JUDGED_CONTROLS
    confusion = cv2.imread(str(out / "confusion.png"))
    assert confusion is not None and confusion.shape[0] > 4 * 56


def test_loaded_judges_read_frames_and_reproduce_the_floor(trained, tiny_corpus):
    """The floor in the report is what metrics.f_lmd / m_lmd give on the evaluator's points for real frames."""
    out, _ = trained
    report = json.loads((out / "evaluator.json").read_text())
    evaluator = load_evaluator(out / "evaluator.pt")
    manifest = pd.read_parquet(tiny_corpus / "manifest.parquet")
    store = open_store(tiny_corpus / "frames.zarr")
    f_values, m_values = [], []
    for row in manifest[(manifest.split == "test") & (manifest.kind == "real")].itertuples():
        frames, truth = store["frames"][row.start:row.stop], store["landmarks"][row.start:row.stop]
        points = evaluator.face_landmarks(frames)
        assert points.shape == (row.frames, 68, 2) and np.isfinite(points).all()
        f_values.append(f_lmd(points, truth))
        m_values.append(m_lmd(points, truth))
        assert evaluator.emotion_logits(frames).shape == (row.frames, 4)
    assert np.mean(f_values) == pytest.approx(report["f_lmd_floor"], abs=1e-3)
    assert np.mean(m_values) == pytest.approx(report["m_lmd_floor"], abs=1e-3)
    # frames of another size: points come back in that size's pixels
    big = np.stack([cv2.resize(f, (128, 128), interpolation=cv2.INTER_LINEAR) for f in frames[:3]])
    np.testing.assert_allclose(evaluator.face_landmarks(big), 2 * evaluator.face_landmarks(frames[:3]), atol=2.0)


def test_training_is_seeded(trained, tiny_corpus, tmp_path):
    from stages.train_evaluator import run_train_evaluator

    out, _ = trained
    run_train_evaluator(tiny_corpus, *(tmp_path / n for n in OUTPUTS[:3]), tmp_path / "c.png",
                        tiny_section("base"), tiny_section("train_evaluator", eval_stride=1))
    first, second = torch.load(out / "evaluator.pt"), torch.load(tmp_path / "evaluator.pt")
    for net in ("emotion", "landmarks"):
        assert all(torch.equal(first["model"][net][k], second["model"][net][k]) for k in first["model"][net])
    assert json.loads((out / "evaluator.json").read_text())["f_lmd_floor"] == \
        json.loads((tmp_path / "evaluator.json").read_text())["f_lmd_floor"]


def test_both_judges_learn_the_training_frames(tiny_corpus, tmp_path):
    """A few hundred steps: the regressor beats the mean shape and the classifier beats chance on the
    frames it trained on (the plumbing of targets, shifts and labels is right)."""
    from pipeline.judges.train import (
        class_order,
        load_frame_set,
        train_evaluator_models,
    )

    # the frames as they come (the plumbing of targets, shifts and labels); balanced draws: test_balanced_draw_...
    p = tiny_section("train_evaluator", steps=300, frame_stride=1, width=8, shift=1, log_every=100,
                     balance_classes=False, max_minutes=0)  # no guard: on a busy CPU it cut the 300 steps short
    train_evaluator_models(tiny_corpus, tmp_path / "e.pt", tmp_path / "l.csv", tmp_path / "c.png",
                           tiny_section("base"), p, log=lambda _: None)
    evaluator = load_evaluator(tmp_path / "e.pt")
    manifest = pd.read_parquet(tiny_corpus / "manifest.parquet")
    clips = manifest[(manifest.split == "train") & (manifest.kind == "real")]
    frames = load_frame_set(tiny_corpus, clips, class_order(manifest), p.image_size, 1, True)
    pred = evaluator.landmarks.predict(frames.faces)
    error = np.linalg.norm(pred - frames.landmarks, axis=-1).mean()
    mean_shape = np.linalg.norm(frames.landmarks - frames.landmarks.mean(axis=0), axis=-1).mean()
    assert error < 0.7 * mean_shape  # measured 1.2 vs 2.5 px
    accuracy = (evaluator.emotion_logits_of_faces(frames.faces).argmax(axis=1) == frames.labels).mean()
    assert accuracy > 0.6  # four classes; measured 0.95
    # the expression judge reads the controls back off the frames it trained on, in their own units
    with_controls = load_frame_set(tiny_corpus, clips, class_order(manifest), p.image_size, 1, True, True)
    truth = with_controls.controls
    pred = evaluator.expression_controls(store_frames(tiny_corpus, clips))
    assert pred.shape == truth.shape
    jaw = JUDGED_CONTROLS.index("jaw_open")
    spread = np.abs(truth[:, jaw] - truth[:, jaw].mean()).mean()
    assert np.abs(pred[:, jaw] - truth[:, jaw]).mean() < 0.75 * spread  # measured 0.61 x after 300 steps


def store_frames(corpus, clips) -> np.ndarray:
    store = open_store(corpus / "frames.zarr")
    return np.concatenate([store["frames"][row.start:row.stop] for row in clips.itertuples()])


def test_bad_params_and_wrong_checkpoints_are_one_line_errors(tiny_corpus, tmp_path):
    params = tiny_params_dict()
    params["train_evaluator"]["soften_fraction"] = 1.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = runner.invoke(app, ["train_evaluator", "--params", str(tmp_path / "params.yaml"), "--corpus",
                                 str(tiny_corpus), *stage_args(tmp_path)])
    assert result.exit_code == 2 and "soften_fraction" in result.output
    assert not (tmp_path / "evaluator.pt").exists()
    wrong = tmp_path / "syncnet.pt"
    torch.save({"model": {"syncnet_color": {"w": torch.zeros(1)}}, "config": {"arch": "syncnet_color"}, "step": 0},
               wrong)
    with pytest.raises(CheckpointError, match="wrong model .syncnet_color"):
        load_evaluator(wrong)


def test_landmark_judge_survives_the_state_round_trip_pseudo_pairs_uses():
    """pseudo_pairs hands its Dask workers `LandmarkRegressor.state()` of the evaluator's 68-point judge."""
    from pipeline.judges.evaluator import face_landmark_net
    from pipeline.judges.mouth_landmarks import LandmarkRegressor, face_input

    torch.manual_seed(0)
    net = face_landmark_net(4, 32).eval()
    regressor = LandmarkRegressor(net, 1.5, 128, 3)
    faces = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = net(face_input(faces)).numpy() * 128
    np.testing.assert_allclose(regressor.predict(faces), expected, rtol=1e-6)
    again = LandmarkRegressor.from_state(regressor.state())
    assert again.predict(faces).shape == (2, 68, 2) and again.face_size == 32 and again.crop_top == 0
    np.testing.assert_array_equal(again.predict(faces), regressor.predict(faces))


# ----------------------------------------------------------------------------------- dlib or regressor


class FakePoint:
    def __init__(self, x, y):
        self.x, self.y = x, y


def fake_dlib(found: list[bool]) -> types.ModuleType:
    """A stand-in for dlib: the detector finds a face in frame t when found[t]; point i sits at (i, t)."""
    module = types.ModuleType("dlib")
    calls = iter(range(len(found)))

    def get_frontal_face_detector():
        def detect(gray, upsample):
            t = next(calls)
            assert gray.ndim == 2 and upsample == 0
            return [("rect", t)] if found[t] else []
        return detect

    def shape_predictor(path):
        class Shape:
            def __init__(self, t):
                self.t = t

            def part(self, i):
                return FakePoint(i, self.t)
        return lambda gray, rect: Shape(rect[1])

    module.get_frontal_face_detector = get_frontal_face_detector
    module.shape_predictor = shape_predictor
    return module


def test_dlib_is_used_when_it_imports_and_a_model_is_given(monkeypatch, tmp_path):
    model = tmp_path / "shape_predictor_68_face_landmarks.dat"
    model.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "dlib", fake_dlib([True, False, True]))
    detector = landmark_detector(None, model)
    assert isinstance(detector, DlibLandmarks)
    points = detector(np.zeros((3, 32, 32, 3), np.uint8))
    assert points.shape == (3, 68, 2) and np.isnan(points[1]).all()  # no face in frame 1: skipped by LMD
    assert points[2, 67].tolist() == [67.0, 2.0]
    with pytest.raises(InputError, match="shape predictor file not found"):
        landmark_detector(None, tmp_path / "missing.dat")


def test_without_dlib_the_regressor_reads_the_landmarks(monkeypatch, trained, tmp_path):
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    evaluator = load_evaluator(trained[0] / "evaluator.pt")
    messages = []
    detector = landmark_detector(evaluator, tmp_path / "model.dat", log=messages.append)
    assert detector == evaluator.face_landmarks and "not installed" in messages[0]
    assert landmark_detector(evaluator) == evaluator.face_landmarks
    evaluator.landmarks = None
    with pytest.raises(InputError, match="no landmark detector"):
        landmark_detector(evaluator)


def test_a_killed_run_resumes_to_the_same_judges(trained, tiny_corpus, tmp_path, monkeypatch):
    """Killed at step 4 of 6 (checkpoint every 2), resumed: the weights, report and log of the unbroken run."""
    from stages.train_evaluator import run_train_evaluator

    out, _ = trained

    def train(**changes):
        run_train_evaluator(tiny_corpus, *(tmp_path / n for n in OUTPUTS[:3]), tmp_path / "c.png",
                            tiny_section("base"), tiny_section("train_evaluator", eval_stride=1, checkpoint_every=2,
                                                               **changes))

    kill_at(monkeypatch, 4)
    with pytest.raises(Killed):
        train()
    assert torch.load(tmp_path / "evaluator.pt", weights_only=True)["step"] == 4
    monkeypatch.undo()
    train(resume=True)
    assert same_weights(out / "evaluator.pt", tmp_path / "evaluator.pt")
    assert (out / "losses.csv").read_bytes() == (tmp_path / "losses.csv").read_bytes()
    assert json.loads((out / "evaluator.json").read_text()) == json.loads((tmp_path / "evaluator.json").read_text())


def test_compression_augmentation_degrades_only_the_last_images():
    from pipeline.judges.train import augment, jpeg_roundtrip

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((6, 3, 32, 32))).float()
    flat = torch.full((1, 3, 32, 32), 0.5)
    assert torch.allclose(jpeg_roundtrip(flat, np.array([20])), flat, atol=2 / 255)  # nothing to lose
    noisy = jpeg_roundtrip(x[:1], np.array([20]))
    assert noisy.shape == (1, 3, 32, 32) and float((noisy - x[:1]).abs().mean()) > 0.05  # noise is what JPEG drops
    out, _ = augment(x.clone(), None, np.random.default_rng(1), shift=0, jitter=0.0, soften_count=0, compress_count=2)
    assert torch.equal(out[:4], x[:4]) and not torch.equal(out[4:], x[4:])
    again, _ = augment(x.clone(), None, np.random.default_rng(1), shift=0, jitter=0.0, soften_count=0,
                       compress_count=2)
    assert torch.equal(out, again)  # seeded


def test_balanced_draw_gives_every_emotion_alike():
    """The wide set is 80% neutral: unbalanced, the judge learned to call everything neutral."""
    from pipeline.judges.train import draw_frames

    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    by_class = [np.flatnonzero(labels == c) for c in range(3)]
    drawn = labels[draw_frames(np.random.default_rng(0), by_class, 3000)]
    assert np.allclose(np.bincount(drawn) / 3000, 1 / 3, atol=0.03)
    assert (draw_frames(np.random.default_rng(1), by_class, 64) == draw_frames(np.random.default_rng(1), by_class,
                                                                              64)).all()

