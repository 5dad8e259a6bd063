"""base.precision: `auto` picks bf16 only where the hardware computes it natively, the choice is recorded in
the outputs (not in the params DVC hashes), and `emmn env` says what this machine gets."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from typer.testing import CliRunner

import pipeline.core.precision as precision_module
from pipeline.core.config import BaseParams, build_section
from pipeline.core.errors import InputError
from pipeline.core.precision import announce_precision, resolve_precision
from stages.cli import app
from tests.conftest import ROOT

runner = CliRunner()


@pytest.fixture
def no_native_bf16(monkeypatch):
    """This CPU as an AVX2-only one (where bf16 autocast is emulated, ~86x slower than fp32)."""
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)


def test_auto_is_fp32_without_native_bf16_and_bf16_with_it(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu).resolved == "fp32" and not resolve_precision("auto", cpu).bf16
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu).resolved == "bf16" and resolve_precision("auto", "cpu").bf16
    assert resolve_precision("fp32", cpu).resolved == "fp32"  # an explicit choice is kept either way
    assert resolve_precision("bf16", cpu).resolved == "bf16"


def test_bf16_on_emulating_hardware_runs_as_asked_but_warns_in_one_line(no_native_bf16, capsys):
    precision = resolve_precision("bf16", "cpu")
    assert precision.bf16 and not precision.native_bf16
    logged = []
    announce_precision(precision, "train_fomm", logged.append)
    assert logged == [f"train_fomm: precision {precision.describe()}"]
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: train_fomm:") and "use auto" in warning[0]
    announce_precision(resolve_precision("auto", "cpu"), "train_fomm", logged.append)
    assert capsys.readouterr().err == ""  # auto never warns: it never picks emulated bf16


def test_unknown_setting_and_the_retired_per_stage_switch_are_one_line_errors():
    with pytest.raises(InputError, match="base.precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(InputError, match="bf16 is gone; set base.precision"):
        build_section(BaseParams, {"bf16": True}, name="train_fomm")


def test_params_hash_the_setting_not_the_machine():
    """One `base.precision: auto`, no per-stage bf16 switch, and every stage that autocasts depends on it."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["base"]["precision"] == "auto"
    assert not [name for name, section in params.items() if isinstance(section, dict) and "bf16" in section]
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    autocasting = ("train_fomm", "keypoints", "train_syncnet", "train_sync_scorer", "train_wav2lip", "pseudo_pairs",
                   "train_evaluator", "finetune_render", "generate")
    for name in autocasting:
        assert "base.precision" in stages[name]["params"], name


def test_env_says_what_auto_picks_here(no_native_bf16, tmp_path):
    result = runner.invoke(app, ["env", "--params", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 0, result.output
    lines = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in result.output.splitlines())
    assert lines["torch"] == torch.__version__ and lines["native bf16"] == "no"
    assert lines["precision"].startswith("fp32 (base.precision auto; CPU ")
    for name in ("cpu capability", "cores", "ffmpeg", "espeak-ng", "dvc", "device", "gpu"):
        assert lines[name] and "not found" not in lines[name], name


def test_env_resolves_the_params_file_it_is_given(native_bf16, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"base": {"precision": "fp32"}}))
    result = runner.invoke(app, ["env", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "fp32 (base.precision fp32; CPU" in result.output and "native bf16" in result.output
