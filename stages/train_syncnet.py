"""`train_syncnet` stage: Wav2Lip's lip-sync expert (SyncNet_color) trained on the corpus, or imported.

    python -m stages.train_syncnet               # what dvc repro runs
    emmn train_syncnet --params params.yaml
Writes data/models/syncnet.pt, the held-out report data/reports/syncnet.json (heldout_accuracy,
in_sync_accuracy, off_sync_accuracy, offset_recovery, ...), the loss log data/reports/syncnet_losses.csv
(DVC plot, x = step). `train_syncnet.pretrained: <lipsync_expert.pth>` imports instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import BaseParams, TrainSyncnetParams, load_section
from pipeline.core.store import write_json
from pipeline.lipsync.syncnet_train import train_syncnet_model
from stages.common import (
    ParamsOption,
    WideAudioOption,
    WideOption,
    one_line_errors,
    run_ranks,
    stage_app,
)

app = stage_app()


def run_train_syncnet(corpus_dir: Path, audio_store: Path, model_out: Path, report: Path, losses_csv: Path,
                      base: BaseParams, p: TrainSyncnetParams, stage: str = "train_syncnet",
                      wide: tuple[Path, Path] | None = None) -> dict:
    """Train (or import) and evaluate a SyncNet_color; write the report and the loss log."""
    metrics = train_syncnet_model(corpus_dir, audio_store, model_out, losses_csv, base, p, stage=stage, wide=wide)
    write_json(report, metrics)
    return metrics


@app.command()
@one_line_errors
def train_syncnet(
    params: ParamsOption = Path("params.yaml"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    audio: Annotated[Path, typer.Option(help="audio feature store (mel windows)")] = Path("data/features/audio.zarr"),
    wide: WideOption = Path("data/wide"),
    wide_audio: WideAudioOption = Path("data/features/wide_audio.zarr"),
    out: Annotated[Path, typer.Option(help="checkpoint to write")] = Path("data/models/syncnet.pt"),
    report: Annotated[Path, typer.Option(help="held-out metrics JSON")] = Path("data/reports/syncnet.json"),
    losses: Annotated[Path, typer.Option(help="loss log CSV (DVC plot)")] = Path("data/reports/syncnet_losses.csv"),
) -> None:
    """Train the SyncNet_color lip-sync expert on corpus windows (or import official weights); held-out report."""
    base, p = load_section("base", params), load_section("train_syncnet", params)
    run_ranks(base.processes, "stages.train_syncnet")
    metrics = run_train_syncnet(corpus, audio, out, report, losses, base, p, wide=(wide, wide_audio))
    typer.echo(json.dumps(metrics))


if __name__ == "__main__":
    app()
