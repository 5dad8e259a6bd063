"""End to end: `dvc repro` of the first stages on the tiny profile in a temp git repo.

Checks the acceptance rules of the DVC skeleton: it runs, a second repro is a no-op, and changing an
audio-feature param re-runs only `audio_features`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import zarr

from tests.conftest import ROOT, tiny_params_dict

DVC = str(Path(sys.executable).with_name("dvc"))


def run(cmd: list[str], cwd: Path) -> str:
    # dvc.yaml runs `python -m ...`: the interpreter running the tests must come first on PATH
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(cwd), "PATH": path}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("e2e")
    for item in ("pipeline", "stages", "dvc.yaml", ".dvc", ".dvcignore", ".gitignore"):
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, repo / item, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
        else:
            shutil.copy2(src, repo / item)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["git", "-c", "user.email=ci@x", "-c", "user.name=ci", "add", "-A"], repo)
    run(["git", "-c", "user.email=ci@x", "-c", "user.name=ci", "commit", "-qm", "init"], repo)
    return repo


def test_repro_noop_and_param_change(repo):
    out = run([DVC, "repro", "corpus", "audio_features"], repo)
    assert "Running stage 'corpus'" in out and "Running stage 'audio_features'" in out
    audio = zarr.open_group(repo / "data/features/audio.zarr", mode="r")
    frames = zarr.open_group(repo / "data/corpus/frames.zarr", mode="r")
    assert audio["mel"].shape[0] == frames["frames"].shape[0]
    assert (repo / "data/reports/corpus_sheet.png").stat().st_size > 1000

    again = run([DVC, "repro", "corpus", "audio_features"], repo)
    assert "Running stage" not in again

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["audio_features"]["mel_pad_mode"] = "constant"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run([DVC, "repro", "corpus", "audio_features"], repo)
    assert "Running stage 'audio_features'" in changed
    assert "Running stage 'corpus'" not in changed
