"""`loss_curves` stage: each loss log drawn as `<stem>.png`; a missing log is a one-line error."""

from __future__ import annotations

import cv2
from typer.testing import CliRunner

from pipeline.training.loop import LossLog
from stages.cli import app

runner = CliRunner()


def test_draws_one_png_per_log_beside_it_or_in_out_dir(tmp_path):
    log = LossLog(tmp_path / "fomm_losses.csv")
    for step, value in ((1, 4.0), (2, 2.0), (3, 1.0)):
        log.log(step, {"total": value, "rec": value / 2})
    log.flush()
    (tmp_path / "audio_losses.csv").write_text("")  # imported weights: an empty log
    result = runner.invoke(app, ["loss_curves", str(tmp_path / "fomm_losses.csv"), str(tmp_path / "audio_losses.csv")])
    assert result.exit_code == 0, result.output
    for stem in ("fomm_losses", "audio_losses"):
        image = cv2.imread(str(tmp_path / f"{stem}.png"))
        assert image is not None and image.shape == (420, 720, 3)
    drawn = cv2.imread(str(tmp_path / "fomm_losses.png"))
    assert (drawn != 255).any(axis=2).sum() > (cv2.imread(str(tmp_path / "audio_losses.png")) != 255).any(axis=2).sum()
    result = runner.invoke(app, ["loss_curves", str(tmp_path / "fomm_losses.csv"), "--out-dir", str(tmp_path / "pngs")])
    assert result.exit_code == 0 and (tmp_path / "pngs" / "fomm_losses.png").is_file()


def test_a_missing_log_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["loss_curves", str(tmp_path / "absent_losses.csv")])
    assert result.exit_code == 2
    assert "absent_losses.csv: loss log not found" in result.output and not list(tmp_path.glob("*.png"))
