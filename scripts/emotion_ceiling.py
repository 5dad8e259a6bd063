"""The renderer's emotion ceilings on the held-out clips (pipeline/emotion_ceiling.py), outside DVC.

    .venv/bin/python scripts/emotion_ceiling.py                     # data/models/fomm.pt, every 3rd frame
    .venv/bin/python scripts/emotion_ceiling.py --fomm other.pt --out other.json --sheet other.png
The evaluator's emotion judge on the real frames, on the neutral reference copied, on the reference warped onto
the true landmarks (perfect geometry, nothing painted) and on the reference driven through FOMM by the frames'
own keypoints; with --emmn, also as the product renders it (EmmnNet's keypoints from the audio, --renderer). ~4 min
on one core. The sheet: one row per emotion, real | landmark warp | FOMM | [EMMN |] reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import cv2
import torch
import typer

from pipeline.emotion_ceiling import EmmnRow, emotion_ceilings
from pipeline.evaluator import load_evaluator
from pipeline.parallel import progress_bar
from stages.common import one_line_errors

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
@one_line_errors
def main(
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    fomm: Annotated[Path, typer.Option(help="FOMM checkpoint driven by the frames' own keypoints")] = Path(
        "data/models/fomm.pt"),
    no_fomm: Annotated[bool, typer.Option("--no-fomm", help="skip the FOMM row")] = False,
    emmn: Annotated[Path | None, typer.Option(help="EmmnNet checkpoint: adds the emmn row (its keypoints from the "
                                                   "audio drive the reference through --renderer)")] = None,
    renderer: Annotated[Path, typer.Option(help="renderer of the emmn row (fomm.pt layout)")] = Path(
        "data/models/emmn_render.pt"),
    audio_store: Annotated[Path, typer.Option(help="audio features of the emmn row")] = Path(
        "data/features/audio.zarr"),
    prosody_store: Annotated[Path, typer.Option(help="prosody of the emmn row")] = Path(
        "data/features/prosody.zarr"),
    read_temperature: Annotated[float | None, typer.Option(
        help="emmn row: Eq. 10's inference tau instead of emmn.pt's (train_memory.read_temperature)")] = None,
    evaluator: Annotated[Path, typer.Option(help="the judges (train_evaluator)")] = Path("data/models/evaluator.pt"),
    stride: Annotated[int, typer.Option(min=1, help="every n-th frame of each clip")] = 3,
    actor: Annotated[str, typer.Option(help="held-out actor of the sheet")] = "M010",
    sentence: Annotated[int, typer.Option(help="sentence of the sheet")] = 30,
    out: Annotated[Path, typer.Option(help="JSON report")] = Path("emotion_ceiling.json"),
    sheet: Annotated[Path, typer.Option(help="contact sheet PNG")] = Path("emotion_ceiling.png"),
    threads: Annotated[int, typer.Option(min=1, help="torch threads")] = 1,
) -> None:
    """Judge accuracy of real / reference / landmark_warp / fomm_keypoints over the held-out clips."""
    torch.set_num_threads(threads)
    judge = load_evaluator(evaluator)
    emmn_row = None if emmn is None else EmmnRow(emmn, renderer, corpus, audio_store, prosody_store, read_temperature)
    with progress_bar() as bar:
        task = bar.add_task("emotion ceilings", total=None)
        report, picture = emotion_ceilings(corpus, judge, None if no_fomm else fomm, stride, actor, sentence,
                                           progress=lambda done, total: bar.update(task, completed=done, total=total),
                                           emmn_row=emmn_row)
    report["fomm"] = None if no_fomm else str(fomm)
    if emmn is not None:
        report.update(emmn_checkpoint=str(emmn), renderer=str(renderer),
                      read_temperature=emmn_row.emmn.config.read_temperature)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if picture is not None:
        cv2.imwrite(str(sheet), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    typer.echo(json.dumps(report))


if __name__ == "__main__":
    app()
