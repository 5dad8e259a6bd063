"""keypoints stage + FOMM report on the tiny corpus (a few-step seeded model), probes and image metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from pipeline.core.config import BaseParams, with_field
from pipeline.core.errors import InputError
from pipeline.core.image_quality import psnr
from pipeline.core.probes import (
    centre_per_group,
    fit_ridge,
    grouped_probe_r2,
    probe_r2,
    r2_score,
    select_alpha,
)
from pipeline.core.store import ArraySpec, RaggedStoreWriter, read_clip, read_index
from pipeline.corpus.manifest import select_evenly
from pipeline.fomm.io import detect_keypoints, load_fomm
from pipeline.fomm.keypoints import build_keypoints, run_keypoints
from pipeline.fomm.report import mouth_boxes, mouth_l1, ssim
from pipeline.training.loop import torch_threads
from stages.train_fomm import run_train_fomm
from tests.conftest import tiny_section

BASE = BaseParams(seed=11, workers=0, device="cpu")
REPORT_KEYS = {
    "heldout": ("psnr", "psnr_copy_source", "mouth_l1", "mouth_l1_copy_source", "ssim"),
    "probe": ("r2_mouth_open", "r2_mouth_open_untrained", "r2_landmarks", "r2_landmarks_untrained"),
}


@pytest.fixture(autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def stage_run(tiny_corpus, tmp_path_factory):
    """train_fomm (6 seeded steps) then keypoints + report, through the stages' worker functions."""
    out = tmp_path_factory.mktemp("fomm")
    with torch_threads(1):
        run_train_fomm(tiny_corpus, out / "fomm.pt", out / "losses.csv", BASE,
                       tiny_section("train_fomm"))
        report = run_keypoints(tiny_corpus, out / "fomm.pt", out / "keypoints.zarr", out / "fomm.json",
                               out / "heldout.mp4", out / "heldout.png", BASE,
                               tiny_section("keypoints", extra_frames=()))  # no pseudo clips here
    return out, report


def test_keypoints_store_is_aligned_with_the_corpus_frames(stage_run, tiny_corpus):
    out, _ = stage_run
    store = zarr.open_group(out / "keypoints.zarr", mode="r")
    frames = zarr.open_group(tiny_corpus / "frames.zarr", mode="r")
    num_frames = frames["frames"].shape[0]
    assert store["value"].shape == (num_frames, 5, 2)
    assert store["jacobian"].shape == (num_frames, 5, 2, 2)
    assert read_index(out / "keypoints.zarr").equals(read_index(tiny_corpus / "frames.zarr"))
    value, jacobian = store["value"][:], store["jacobian"][:]
    assert np.isfinite(value).all() and np.isfinite(jacobian).all()
    assert np.abs(value).max() <= 1.0
    attrs = store.attrs.asdict()
    assert attrs["schema"] == "emmn.keypoints/v1" and attrs["stage"] == "keypoints"
    assert attrs["params"]["keypoints"]["report_clips"] == 2 and attrs["model"]["step"] == 6
    assert attrs["model"]["config"]["num_kp"] == 5

    # Row r of a clip = the detector on corpus frame r of that clip.
    model = load_fomm(out / "fomm.pt")
    clip_id = read_index(tiny_corpus / "frames.zarr").clip_id[7]
    corpus_clip = read_clip(tiny_corpus / "frames.zarr", clip_id, ("frames",))["frames"]
    bf16 = attrs["precision"] == "bf16"  # base.precision auto: what this machine runs natively
    direct_value, direct_jacobian = detect_keypoints(model.kp_detector, corpus_clip, 64, bf16=bf16)
    stored = read_clip(out / "keypoints.zarr", clip_id)
    assert np.abs(stored["value"] - direct_value).max() < 1e-6
    assert np.abs(stored["jacobian"] - direct_jacobian).max() < 1e-6
    if bf16:
        exact_value, _ = detect_keypoints(model.kp_detector, corpus_clip, 64)  # fp32: bf16 stays close
        assert 0 < np.abs(stored["value"] - exact_value).max() < 0.02


def test_report_has_every_key_and_pictures(stage_run):
    out, report = stage_run
    on_disk = json.loads((out / "fomm.json").read_text())
    assert on_disk == report
    for section, keys in REPORT_KEYS.items():
        for key in keys:
            assert isinstance(on_disk[section][key], float), (section, key)
    heldout = on_disk["heldout"]
    assert heldout["clips"] == 2 and heldout["frames"] > 40  # report_clips: 2 of the 4 held-out real clips
    assert 5.0 < heldout["psnr_copy_source"] < 60.0
    assert 0.0 < heldout["mouth_l1_copy_source"] < 0.5
    assert on_disk["probe"]["train_actors"] == 2 and on_disk["probe"]["test_actors"] == 1
    assert on_disk["model"]["step"] == 6
    assert (out / "heldout.mp4").stat().st_size > 10_000
    assert (out / "heldout.png").stat().st_size > 10_000


def test_extra_frame_stores_are_appended_and_duplicates_refused(stage_run, tiny_corpus, tmp_path):
    out, _ = stage_run
    index = read_index(tiny_corpus / "frames.zarr")
    frames = zarr.open_group(tiny_corpus / "frames.zarr", mode="r")["frames"]
    picks = index.iloc[[3, 0]]
    extra = tmp_path / "pseudo.zarr"
    writer = RaggedStoreWriter(extra, [f"pseudo_{c}" for c in picks.clip_id], list(picks.stop - picks.start),
                               {"frames": ArraySpec((64, 64, 3), "uint8", ("y", "x", "rgb"))}, attrs={},
                               chunk_frames=16, shard_frames=256)
    for i, row in enumerate(picks.itertuples()):
        writer.write_clip(i, {"frames": frames[row.start:row.stop]})
    writer.close()

    p = with_field(tiny_section("keypoints"), extra_frames=(str(extra),))
    total = build_keypoints(tiny_corpus, out / "fomm.pt", tmp_path / "kp.zarr", BASE, p)
    assert total == frames.shape[0] + int((picks.stop - picks.start).sum())
    combined = read_index(tmp_path / "kp.zarr")
    assert list(combined.clip_id[: len(index)]) == list(index.clip_id)
    assert list(combined.clip_id[len(index):]) == [f"pseudo_{c}" for c in picks.clip_id]
    same = read_clip(tmp_path / "kp.zarr", f"pseudo_{picks.clip_id.iloc[0]}")["value"]
    assert np.array_equal(same, read_clip(out / "keypoints.zarr", picks.clip_id.iloc[0])["value"])

    twice = with_field(p, extra_frames=(str(extra), str(extra)))
    with pytest.raises(InputError, match="clip id 'pseudo_.*' is already in an earlier store"):
        build_keypoints(tiny_corpus, out / "fomm.pt", tmp_path / "kp2.zarr", BASE, twice)
    assert not (tmp_path / "kp2.zarr").exists()  # nothing half-written is left behind

    # an extra store with neutral references adds its actors; one naming a corpus actor again is refused
    root = zarr.open_group(extra, mode="a")
    root.create_array("reference_frames", data=frames[:1])
    actor = root.create_array("reference_actor", shape=(1,), dtype=str)
    actor[:] = np.asarray(["X1"])
    build_keypoints(tiny_corpus, out / "fomm.pt", tmp_path / "kp3.zarr", BASE, p)
    corpus_actors = list(zarr.open_group(tiny_corpus / "frames.zarr", mode="r")["reference_actor"][:])
    assert list(zarr.open_group(tmp_path / "kp3.zarr", mode="r")["reference_actor"][:]) == corpus_actors + ["X1"]
    actor[:] = np.asarray([corpus_actors[0]])
    with pytest.raises(InputError, match=f"actor '{corpus_actors[0]}' already has a neutral reference"):
        build_keypoints(tiny_corpus, out / "fomm.pt", tmp_path / "kp4.zarr", BASE, p)
    assert not (tmp_path / "kp4.zarr").exists()


# --------------------------------------------------------------------------------------------- probes


def test_ridge_recovers_a_linear_map_and_r2_reference_values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    w = rng.normal(size=(6, 3))
    y = x @ w + np.array([1.0, -2.0, 0.5])
    probe = fit_ridge(x[:300], y[:300], alpha=1e-6)
    assert r2_score(y[300:], probe.predict(x[300:])) > 0.999999
    assert r2_score(y, np.repeat(y.mean(axis=0, keepdims=True), len(y), axis=0)) == pytest.approx(0.0, abs=1e-12)
    # Predicting the negated deviations from the mean: SS_res = 4 SS_tot -> R^2 = -3.
    assert r2_score(y, 2 * y.mean(axis=0) - y) == pytest.approx(-3.0)
    # NaN rows are dropped, not propagated.
    x_nan = x.copy()
    x_nan[5] = np.nan
    assert probe_r2(x_nan[:300], y[:300], x[300:], y[300:], alpha=1e-6) > 0.999999


def test_alpha_selection_by_group_cross_validation():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(4), 50)
    x = rng.normal(size=(200, 30))
    noise_target = rng.normal(size=200)  # unrelated to x: the strongest penalty generalises best
    alpha, _ = select_alpha(x, noise_target, groups, (0.01, 1.0, 1e6))
    assert alpha == 1e6
    signal = x[:, 0] * 3 + 0.01 * rng.normal(size=200)  # a clean linear target: the weakest penalty wins
    alpha, score = select_alpha(x, signal, groups, (0.01, 1.0, 1e6))
    assert alpha == 0.01 and score > 0.99
    r2, alpha = grouped_probe_r2(x[:150], signal[:150], groups[:150], x[150:], signal[150:], (0.01, 1e6))
    assert alpha == 0.01 and r2 > 0.99


# --------------------------------------------------------------------------------------- image metrics


def test_psnr_ssim_and_mouth_region_by_hand():
    target = torch.full((1, 3, 32, 32), 0.5)
    assert float(psnr(target + 0.1, target, data_range=1.0, mse_floor=1e-10)[0]) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(image, image), torch.ones(2), atol=1e-6)
    assert float(ssim(image, torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))[0]) < 0.1

    landmarks = np.zeros((1, 68, 2))
    landmarks[0, 48:68] = [[10, 20], [30, 20], [20, 26], [20, 14]] * 5  # lips span x 10..30, y 14..26
    box = mouth_boxes(landmarks, size=64, margin=0.1)[0]  # pad = 0.1 * 20 = 2 px
    assert box.tolist() == [8, 12, 33, 29]
    prediction = target.expand(1, 3, 32, 32).clone()
    prediction[:, :, 12:29, 8:32] += 0.2  # the whole (clipped) box differs by 0.2
    clipped = mouth_boxes(landmarks, size=32, margin=0.1)
    assert clipped[0].tolist() == [8, 12, 32, 29]
    assert float(mouth_l1(prediction, target, clipped)[0]) == pytest.approx(0.2, abs=1e-6)


def test_select_evenly_spreads_over_the_list():
    items = [f"c{i}" for i in range(10)]
    assert select_evenly(items, 3) == ["c0", "c4", "c9"]  # linspace 0, 4.5, 9 rounds half to even
    assert select_evenly(items, 0) == items and select_evenly(items, 20) == items


def test_missing_model_is_a_one_line_error(tiny_corpus, tmp_path):
    from pipeline.core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        build_keypoints(tiny_corpus, tmp_path / "none.pt", tmp_path / "kp.zarr", BASE,
                        tiny_section("keypoints", extra_frames=()))


def test_reference_keypoints_are_the_detector_on_each_actors_neutral_frame(stage_run, tiny_corpus):
    out, _ = stage_run
    store = zarr.open_group(out / "keypoints.zarr", mode="r")
    corpus = zarr.open_group(tiny_corpus / "frames.zarr", mode="r")
    actors = list(corpus["reference_actor"][:])
    assert list(store["reference_actor"][:]) == actors and len(actors) == 3  # 2 training + 1 held-out actor
    assert store["reference_value"].shape == (3, 5, 2) and store["reference_jacobian"].shape == (3, 5, 2, 2)
    value, jacobian = detect_keypoints(load_fomm(out / "fomm.pt").kp_detector, corpus["reference_frames"][:], 64)
    np.testing.assert_allclose(store["reference_value"][:], value, atol=1e-6)
    np.testing.assert_allclose(store["reference_jacobian"][:], jacobian, atol=1e-6)
    first_clip = read_index(out / "keypoints.zarr").clip_id[0]
    assert set(read_clip(out / "keypoints.zarr", first_clip)) == {"value", "jacobian"}  # references are not per frame


def test_centre_per_group_removes_each_groups_mean():
    x = np.array([[1.0, 10.0], [3.0, 14.0], [100.0, 0.0], [np.nan, np.nan], [104.0, 2.0]])
    groups = np.array(["a", "a", "b", "b", "b"])
    centred = centre_per_group(x, groups)
    np.testing.assert_allclose(centred[:3], [[-1.0, -2.0], [1.0, 2.0], [-2.0, -1.0]])
    assert np.isnan(centred[3]).all()
    np.testing.assert_allclose(centred[4], [2.0, 1.0])


def _tree_md5(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_keypoints_through_a_real_dask_cluster_write_the_same_bytes(stage_run, tiny_corpus, tmp_path):
    """`dask scheduler` + two `dask worker` processes on 127.0.0.1, reached through base.scheduler_address, give
    the same keypoints.zarr, file by file, as the in-process run."""
    import os
    import subprocess
    import sys
    import time

    from distributed import Client

    from tests.conftest import ROOT

    out, _ = stage_run
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    dask = [sys.executable, "-m", "dask"]
    processes = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                   "--scheduler-file", str(scheduler_file)], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not (scheduler_file.is_file() and scheduler_file.stat().st_size):
            assert processes[0].poll() is None and time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.1)
        processes += [subprocess.Popen([*dask, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                                        "--no-dashboard", "--name", f"w{i}"], cwd=ROOT, env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            address = client.scheduler.address
        cluster = tmp_path / "cluster"
        run_keypoints(tiny_corpus, out / "fomm.pt", cluster / "keypoints.zarr", cluster / "fomm.json",
                      cluster / "heldout.mp4", cluster / "heldout.png",
                      BaseParams(seed=11, workers=0, device="cpu", scheduler_address=address),
                      tiny_section("keypoints", extra_frames=()))
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    assert _tree_md5(cluster / "keypoints.zarr") == _tree_md5(out / "keypoints.zarr")
