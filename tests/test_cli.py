"""The `emmn` umbrella, `emmn inspect`, and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from stages.cli import app

runner = CliRunner()


def test_help_lists_every_stage_and_tool():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("corpus", "audio_features", "inspect"):
        assert name in result.output


def test_stage_modules_run_as_python_m():
    proc = subprocess.run([sys.executable, "-m", "stages.corpus", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--params" in proc.stdout


def test_inspect_summarizes_a_store(tiny_corpus):
    from pipeline.core.inspect_store import summarize_store

    s = summarize_store(tiny_corpus / "frames.zarr")
    names = {a["name"]: a for a in s["arrays"]}
    assert names["frames"]["dtype"] == "uint8" and names["frames"]["shards"] is not None
    assert names["frames"]["ratio"] > 1.5  # zstd on rendered faces
    assert names["landmarks"]["nan"] == 0
    assert s["clips"]["count"] > 0 and s["clips"]["min"] > 0
    result = runner.invoke(app, ["inspect", str(tiny_corpus / "frames.zarr")])
    assert result.exit_code == 0 and "frames" in result.output and "clips" in result.output


def test_inspect_on_a_non_store_exits_2(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a Zarr store" in result.output


def test_bad_params_key_is_one_line_error(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("base: {seed: 1}\ncorpus: {sise: 64}\n")
    result = runner.invoke(app, ["corpus", "--params", str(bad), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "unknown key" in result.output and "sise" in result.output
    assert not (tmp_path / "c").exists()
