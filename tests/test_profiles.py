"""Profiles: every profile parses into valid sections; `emmn profile` switches params.yaml between them, changing
only the values that differ and keeping the comments."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from pipeline.core.errors import InputError
from pipeline.core.profiles import (
    default_params,
    profile_names,
    profile_params,
    write_profile,
)
from tests.conftest import ROOT, tiny_params_dict


def test_every_profile_parses_and_default_is_params_yaml():
    assert {"default", "tiny", "quick", "paper"} <= set(profile_names())
    for name in profile_names():
        profile_params(name)  # every key known to its section
    assert default_params() == yaml.safe_load((ROOT / "params.yaml").read_text())
    assert profile_params("tiny") == tiny_params_dict()
    paper = profile_params("paper")
    assert paper["train_fomm"]["num_kp"] == 10 and paper["corpus"]["source"] == "mead"
    quick = profile_params("quick")
    assert quick["train_fomm"]["steps"] < default_params()["train_fomm"]["steps"]


def test_an_unknown_profile_or_key_is_refused(tmp_path):
    with pytest.raises(InputError, match="no such profile"):
        profile_params("fast", tmp_path)
    (tmp_path / "typo.yaml").write_text("train_fomm:\n  stepz: 3\n")
    with pytest.raises(Exception, match="stepz"):
        profile_params("typo", tmp_path)


def test_profile_command_switches_there_and_back_keeping_comments(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy2(ROOT / "params.yaml", params)
    comments = [line for line in params.read_text().splitlines() if line.lstrip().startswith("#")]
    cli = [sys.executable, "-m", "stages.cli", "profile"]
    done = subprocess.run([*cli, "quick", "--params", str(params)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(params.read_text()) == profile_params("quick")
    for name in ("tiny", "default"):
        changed = write_profile(params, profile_params(name))
        assert changed and yaml.safe_load(params.read_text()) == profile_params(name)
    assert write_profile(params, default_params()) == []  # already there: nothing to change
    assert [line for line in params.read_text().splitlines() if line.lstrip().startswith("#")] == comments
    bad = subprocess.run([*cli, "nosuch", "--params", str(params)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "no such profile" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
