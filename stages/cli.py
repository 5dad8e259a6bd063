"""The `emmn` command: every pipeline stage plus tools (`inspect`).

Stages are the same functions `python -m stages.<name>` runs (dvc.yaml uses that form).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stages import (
    audio_features,
    corpus,
    decompose,
    emotion_ceiling,
    evaluate,
    figures,
    finetune_render,
    generate,
    keypoints,
    loss_curves,
    motion_report,
    pretrain_mouth,
    prosody,
    pseudo_pairs,
    report,
    sync_filter,
    sync_score,
    table2,
    train_audio,
    train_evaluator,
    train_fomm,
    train_memory,
    train_motion,
    train_sync_scorer,
    train_syncnet,
    train_wav2lip,
    wide_corpus,
)
from stages.common import one_line_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="EMMN: emotional talking faces from one photo and a speech clip (DVC pipeline stages + tools).")

app.command("corpus")(corpus.corpus)
app.command("wide_corpus")(wide_corpus.wide_corpus)
app.command("audio_features")(audio_features.audio_features)
app.command("prosody")(prosody.prosody)
app.command("train_fomm")(train_fomm.train_fomm)
app.command("keypoints")(keypoints.keypoints)
app.command("train_syncnet")(train_syncnet.train_syncnet)
app.command("train_sync_scorer")(train_sync_scorer.train_sync_scorer)
app.command("train_wav2lip")(train_wav2lip.train_wav2lip)
app.command("pseudo_pairs")(pseudo_pairs.pseudo_pairs)
app.command("sync_filter")(sync_filter.sync_filter)
app.command("sync-score")(sync_score.sync_score)
app.command("finetune_render")(finetune_render.finetune_render)
app.command("generate")(generate.generate)
app.command("train_evaluator")(train_evaluator.train_evaluator)
app.command("train-evaluator", hidden=True)(train_evaluator.train_evaluator)  # the spelling of the brief
app.command("evaluate")(evaluate.evaluate)
app.command("figures")(figures.figures)
app.command("pretrain_mouth")(pretrain_mouth.pretrain_mouth)
app.command("train_memory")(train_memory.train_memory)
app.command("train-memory", hidden=True)(train_memory.train_memory)  # the spelling of the brief
app.command("train_audio")(train_audio.train_audio)
app.command("train-audio", hidden=True)(train_audio.train_audio)  # the spelling issue 7 uses
app.command("train_motion")(train_motion.train_motion)
app.command("train-motion", hidden=True)(train_motion.train_motion)  # the spelling of issue 6's brief
app.command("decompose")(decompose.decompose)
app.command("motion_report")(motion_report.motion_report)
app.command("motion-report", hidden=True)(motion_report.motion_report)
app.command("table2")(table2.table2)
app.command("emotion_ceiling")(emotion_ceiling.emotion_ceiling)
app.command("loss_curves")(loss_curves.loss_curves)
app.command("report")(report.report)


@app.command("env")
@one_line_errors
def env(params: Annotated[Path, typer.Option(help="params.yaml whose base.precision / base.device to resolve "
                                                  "(built-in defaults when missing)")] = Path("params.yaml")) -> None:
    """This machine as the pipeline sees it (torch, device, CPU capability, resolved precision, threads, ffmpeg,
    espeak-ng, DVC): paste it into bug reports."""
    from pipeline.core.config import BaseParams, load_section
    from pipeline.core.environment import describe_environment, format_environment

    base = load_section("base", params) if params.is_file() else BaseParams()
    typer.echo(format_environment(describe_environment(base.precision, base.device)))


@app.command("profile")
@one_line_errors
def profile(name: Annotated[str, typer.Argument(help="default | tiny | quick | paper (profiles/<name>.yaml)")],
            params: Annotated[Path, typer.Option(help="the params file to rewrite")] = Path("params.yaml")) -> None:
    """Set params.yaml to a profile: the built-in defaults plus profiles/<name>.yaml, changing only the keys that
    differ (comments kept). Then `dvc repro` re-runs what those keys feed, or `dvc exp run -n <name>`."""
    from pipeline.core.errors import InputError
    from pipeline.core.profiles import profile_params, write_profile

    if not params.is_file():
        raise InputError(params, "no params file here (run in the repository, or pass --params)")
    changed = write_profile(params, profile_params(name))
    typer.echo(f"{params}: profile {name}, {len(changed)} value(s) changed" + (f": {', '.join(changed)}"
                                                                              if len(changed) <= 12 else ""))


@app.command("inspect")
@one_line_errors
def inspect(path: Annotated[Path, typer.Argument(help="a Zarr store written by a stage")]) -> None:
    """Summary of a Zarr store via Dask: arrays, shapes, chunks/shards, compression, clip lengths, NaNs."""
    from pipeline.core.inspect_store import format_summary, summarize_store

    typer.echo(format_summary(summarize_store(path)))


if __name__ == "__main__":
    app()
