"""The `emmn` command: every pipeline stage plus tools (`inspect`).

Stages are the same functions `python -m stages.<name>` runs (dvc.yaml uses that form).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stages import audio_features, corpus
from stages import keypoints, train_fomm
from stages import pseudo_pairs, sync_filter, sync_score, train_sync_scorer, train_syncnet, train_wav2lip
from stages.common import one_line_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="EMMN: emotional talking faces from one photo and a speech clip (DVC pipeline stages + tools).")

app.command("corpus")(corpus.corpus)
app.command("audio_features")(audio_features.audio_features)
app.command("train_fomm")(train_fomm.train_fomm)
app.command("keypoints")(keypoints.keypoints)
app.command("train_syncnet")(train_syncnet.train_syncnet)
app.command("train_sync_scorer")(train_sync_scorer.train_sync_scorer)
app.command("train_wav2lip")(train_wav2lip.train_wav2lip)
app.command("pseudo_pairs")(pseudo_pairs.pseudo_pairs)
app.command("sync_filter")(sync_filter.sync_filter)
app.command("sync-score")(sync_score.sync_score)


@app.command("inspect")
@one_line_errors
def inspect(path: Annotated[Path, typer.Argument(help="a Zarr store written by a stage")]) -> None:
    """Summary of a Zarr store via Dask: arrays, shapes, chunks/shards, compression, clip lengths, NaNs."""
    from pipeline.inspect_store import format_summary, summarize_store

    typer.echo(format_summary(summarize_store(path)))


if __name__ == "__main__":
    app()
