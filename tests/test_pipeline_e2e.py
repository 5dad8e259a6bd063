"""End to end: the whole `dvc repro` (every stage of dvc.yaml) on the tiny profile in a temp git repo.

What a user checks after `dvc repro`: every stage ran, a second repro is a no-op, Table 1 / Table 2 / the
figures are there, `dvc metrics show` works, and a param change re-runs exactly the stages that depend on
it (an evaluate param: evaluate and what follows, not the stages before; an audio-feature param: both
audio_features items, not the corpora).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
import zarr

from pipeline.core.media import has_audio_stream, read_video
from pipeline.core.profiles import write_profile
from pipeline.evaluation.report_page import broken_references
from tests.conftest import ROOT, tiny_params_dict
from tests.dvc_closure import copy_sources, entry_paths, expanded_stages, is_under

DVC = str(Path(sys.executable).with_name("dvc"))
STAGES: dict = expanded_stages()  # foreach stages as name@item, as dvc names them
METRIC_KEYS = ("psnr", "ssim", "m_lmd", "f_lmd", "sync_conf", "lse_d", "expr_err_mouth", "expr_err_upper",
               "emotion_acc")


def run(cmd: list[str], cwd: Path) -> str:
    # dvc.yaml runs `python -m ...`: the interpreter running the tests must come first on PATH
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(cwd), "PATH": path}
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if os.environ.get("E2E_TIMINGS"):  # where CI minutes go: seconds per command
        with open(os.environ["E2E_TIMINGS"], "a") as log:
            log.write(f"{time.monotonic() - started:7.1f}s {' '.join(map(str, cmd[1:4]))}\n")
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def ran_stages(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


def stage_params(stage: dict) -> set[str]:
    return {p for p in stage.get("params") or [] if isinstance(p, str)}


def affected_by(section: str) -> set[str]:
    """Stages that depend on params `section` (whole or one key), and every stage downstream of them."""
    hit = {n for n, s in STAGES.items() if any(p.split(".")[0] == section for p in stage_params(s))}
    while True:
        outs = {p for n in hit for kind in ("outs", "metrics", "plots") for p in entry_paths(STAGES[n].get(kind))}
        more = {n for n, s in STAGES.items() if n not in hit
                and any(is_under(d, outs) or is_under(o, {d}) for d in entry_paths(s.get("deps")) for o in outs)}
        if not more:
            return hit
        hit |= more


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("e2e")
    copy_sources(repo)
    # the user's way to a profile: `emmn profile tiny` on the annotated params.yaml (device pinned for the smoke
    # test of bench/gpu_check.sh below, which runs on this repository with --device cpu)
    shutil.copy2(ROOT / "params.yaml", repo / "params.yaml")
    run([sys.executable, "-m", "stages.cli", "profile", "tiny"], repo)
    write_profile(repo / "params.yaml", {"base": {"device": "cpu"}})
    wanted = tiny_params_dict()
    wanted["base"]["device"] = "cpu"
    assert yaml.safe_load((repo / "params.yaml").read_text()) == wanted
    assert "# " in (repo / "params.yaml").read_text()  # comments kept
    run(["git", "init", "-q"], repo)
    run(["git", "-c", "user.email=ci@x", "-c", "user.name=ci", "add", "-A"], repo)
    run(["git", "-c", "user.email=ci@x", "-c", "user.name=ci", "commit", "-qm", "init"], repo)
    return repo


def out_hashes(repo: Path) -> dict[str, str]:
    """Every stage output's md5 as dvc.lock records it."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for stage in lock.values() for o in stage.get("outs", [])}


def set_param(repo: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params[section][key] != value
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def check_metrics(reports: Path) -> None:
    metrics = json.loads((reports / "metrics.json").read_text())
    produced = json.loads((reports / "generate.json").read_text())["rows"]
    assert "emmn" in produced and "ground_truth" in produced
    assert list(metrics) == produced, "metrics.json: one object per generated row, in order"
    for row, values in metrics.items():
        assert set(values) == {*METRIC_KEYS, "expr_err_by_control"}, row
        assert all(isinstance(v, float) for v in values.pop("expr_err_by_control").values()), row
        for key, v in values.items():
            if row == "ground_truth" and key == "psnr":
                assert v is None  # PSNR of the ground truth against itself: infinite
            else:
                assert isinstance(v, (int, float)) and not isinstance(v, bool), (row, key, v)
    assert all(math.isfinite(v) for v in metrics["emmn"].values())
    assert metrics["ground_truth"]["ssim"] == pytest.approx(1.0)


def test_whole_repro_noop_and_param_changes(repo):
    out = run([DVC, "repro"], repo)
    assert ran_stages(out) == set(STAGES), f"stages that did not run: {set(STAGES) - ran_stages(out)}"

    # corpus and audio features agree frame for frame
    audio = zarr.open_group(repo / "data/features/audio.zarr", mode="r")
    frames = zarr.open_group(repo / "data/corpus/frames.zarr", mode="r")
    assert audio["mel"].shape[0] == frames["frames"].shape[0]

    reports = repo / "data/reports"
    check_metrics(reports)
    for name, min_bytes in [("corpus_sheet.png", 1000), ("table1.md", 300), ("table2.md", 300),
                            ("fig6_sheet.png", 1000), ("side_by_side.mp4", 1000), ("emotions_sheet.png", 1000)]:
        assert (reports / name).stat().st_size > min_bytes, name
    assert "| EMMN |" in (reports / "table1.md").read_text()
    video, _ = read_video(reports / "side_by_side.mp4")
    assert len(video) > 0 and video.std() > 0 and has_audio_stream(reports / "side_by_side.mp4")
    # every Table 2 row trained and scored (the tiny sync_filter keeps every pseudo clip)
    table2 = json.loads((reports / "table2.json").read_text())
    assert list(table2) == tiny_params_dict()["table2"]["rows"]
    assert all(row["clips"] > 0 and math.isfinite(row["psnr"]) for row in table2.values()), table2
    # the results page: one file, everything inside it (tests/test_report_page.py opens one in Chromium)
    page = (reports / "index.html").read_text()
    assert broken_references(page, reports) == [] and "<table>" in page
    assert page.count("data:video/mp4;base64,") == 2 and page.count("data:image/png;base64,") >= 20
    shown = run([DVC, "metrics", "show"], repo)
    assert "data/reports/metrics.json" in shown

    again = run([DVC, "repro"], repo)
    assert "Running stage" not in again

    # bench/gpu_check.sh on the CPU: profile and device as they are here, so its repro is a no-op; then the
    # generate speed rows
    checked = run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu", "--profile", "tiny",
                   "--workdir", str(repo), "--sizes", "64", "--iters", "1", "--json", str(repo / "check.json")], ROOT)
    assert "dvc repro (all)" in checked and '"ms_per_frame"' in checked
    check = json.loads((repo / "check.json").read_text())
    assert check["stages"] == {} and check["generate"][0]["side"] == 64 and check["generate"][0]["fps"] > 0
    (repo / "check.json").unlink()
    (repo / "generate_speed.json").unlink()

    # Re-running a renderer and the trainers reproduces the same outputs, so every output keeps its md5 (no
    # wall-clock time inside a checkpoint, report or loss log) and nothing downstream goes stale. Left out to keep
    # CI short, each with its own seeded / resume test: corpus (test_corpus), the sync scorer (train_syncnet's
    # code), train_wav2lip, train_motion, finetune_render, the memory's ablation variants (@emmn's code); table2's
    # rows keep their timings outside the output (tests/test_table2.py).
    before = out_hashes(repo)
    rerun = [n for n in STAGES if n in ("wide_corpus", "train_fomm", "train_syncnet", "train_audio", "pretrain_mouth",
                                        "train_memory@emmn", "train_evaluator")]
    assert len(rerun) == 7
    assert ran_stages(run([DVC, "repro", "-f", "-s", *rerun], repo)) == set(rerun)
    after = out_hashes(repo)
    changed = sorted(path for path in before if after.get(path) != before[path])
    assert not changed, f"a rerun changed these outputs (md5): {changed}"
    assert "Data and pipelines are up to date" in run([DVC, "status"], repo)

    # run-only knobs are in no stage's params: changing them re-runs nothing
    set_param(repo, "train_fomm", "threads", 1)
    set_param(repo, "train_fomm", "log_every", 3)
    set_param(repo, "base", "workers", 1)
    assert "Data and pipelines are up to date" in run([DVC, "status"], repo)

    # restyling the loss plots re-runs the drawing stage alone, no training
    curves = repo / "pipeline/training/curves.py"
    curves.write_text(curves.read_text() + "\n# restyled\n")
    assert ran_stages(run([DVC, "repro"], repo)) == {"loss_curves"}

    # a late stage's param: that stage and what follows, nothing before (a train_memory param re-runs the three
    # train_memory items and everything after them: the same rule at three times the CI minutes)
    set_param(repo, "evaluate", "rows", ["ground_truth", "emmn"])
    changed = ran_stages(run([DVC, "repro"], repo))
    assert changed == affected_by("evaluate") and "evaluate" in changed
    assert not changed & {"corpus", "wide_corpus", "audio_features@corpus", "audio_features@wide", "train_fomm",
                          "keypoints", "train_motion", "train_memory@emmn", "generate"}

    # an audio-feature param: both audio_features items re-run, neither corpus does
    set_param(repo, "audio_features", "mel_pad_mode", "constant")
    changed = ran_stages(run([DVC, "repro", "corpus", "wide_corpus", "audio_features"], repo))
    assert {"audio_features@corpus", "audio_features@wide"} <= changed and not changed & {"corpus", "wide_corpus"}
