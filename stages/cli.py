"""The `emmn` command: every pipeline stage plus tools (`inspect`).

Stages are the same functions `python -m stages.<name>` runs (dvc.yaml uses that form).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stages import audio_features, corpus
from stages.common import one_line_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="EMMN: emotional talking faces from one photo and a speech clip (DVC pipeline stages + tools).")

app.command("corpus")(corpus.corpus)
app.command("audio_features")(audio_features.audio_features)


@app.command("inspect")
@one_line_errors
def inspect(path: Annotated[Path, typer.Argument(help="a Zarr store written by a stage")]) -> None:
    """Summary of a Zarr store via Dask: arrays, shapes, chunks/shards, compression, clip lengths, NaNs."""
    from pipeline.inspect_store import format_summary, summarize_store

    typer.echo(format_summary(summarize_store(path)))


if __name__ == "__main__":
    app()
