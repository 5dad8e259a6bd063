"""`train_sync_scorer` stage: a second SyncNet_color, from another seed, that scores the pseudo clips.

    python -m stages.train_sync_scorer           # what dvc repro runs
    emmn train_sync_scorer --params params.yaml
Wav2Lip is trained to please the expert of `train_syncnet`, so that expert's confidence on Wav2Lip's own
output is biased upwards; the paper filters with SyncNet, a model Wav2Lip never saw. This stage trains
the same architecture from `base.seed + seed_offset` (other initial weights, other batches) and is the
default scorer of `sync_filter` and `emmn sync-score`. Writes data/models/sync_scorer.pt, the held-out
report data/reports/sync_scorer.json and the loss log data/reports/sync_scorer_losses.csv.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import load_section
from stages.common import (
    ParamsOption,
    WideAudioOption,
    WideOption,
    one_line_errors,
    run_ranks,
    stage_app,
)
from stages.train_syncnet import run_train_syncnet

app = stage_app()


@app.command()
@one_line_errors
def train_sync_scorer(
    params: ParamsOption = Path("params.yaml"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    audio: Annotated[Path, typer.Option(help="audio feature store (mel windows)")] = Path("data/features/audio.zarr"),
    wide: WideOption = Path("data/wide"),
    wide_audio: WideAudioOption = Path("data/features/wide_audio.zarr"),
    out: Annotated[Path, typer.Option(help="checkpoint to write")] = Path("data/models/sync_scorer.pt"),
    report: Annotated[Path, typer.Option(help="held-out metrics JSON")] = Path("data/reports/sync_scorer.json"),
    losses: Annotated[Path, typer.Option(help="loss log CSV (DVC plot)")] = Path(
        "data/reports/sync_scorer_losses.csv"),
) -> None:
    """Train the independent SyncNet_color that scores pseudo clips (sync_filter, sync-score)."""
    base, p = load_section("base", params), load_section("train_sync_scorer", params)
    run_ranks(base.processes, "stages.train_sync_scorer")
    metrics = run_train_syncnet(corpus, audio, out, report, losses, base, p, stage="train_sync_scorer",
                                wide=(wide, wide_audio))
    typer.echo(json.dumps(metrics))


if __name__ == "__main__":
    app()
