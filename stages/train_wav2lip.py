"""`train_wav2lip` stage: the Wav2Lip generator trained on the corpus against the frozen expert, or imported.

    python -m stages.train_wav2lip               # what dvc repro runs
    emmn train_wav2lip --params params.yaml
Reads the expert data/models/syncnet.pt. Writes data/models/wav2lip.pt, the held-out report
data/reports/wav2lip.json (heldout_l1, heldout_psnr, sync_conf_real / generated / redub /
original_mouth, ...), the loss log data/reports/wav2lip_losses.csv (DVC plot).
`train_wav2lip.pretrained: <wav2lip.pth>` imports the official generator instead of training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import BaseParams, TrainWav2lipParams, load_section
from pipeline.core.store import write_json
from pipeline.lipsync.wav2lip_train import train_wav2lip_model
from stages.common import (
    ParamsOption,
    WideAudioOption,
    WideOption,
    one_line_errors,
    run_ranks,
    stage_app,
)

app = stage_app()


def run_train_wav2lip(corpus_dir: Path, audio_store: Path, expert: Path, model_out: Path, report: Path,
                      losses_csv: Path, base: BaseParams, p: TrainWav2lipParams,
                      wide: tuple[Path, Path] | None = None) -> dict:
    """Train (or import) and evaluate the generator; write the report and the loss log."""
    metrics = train_wav2lip_model(corpus_dir, audio_store, expert, model_out, losses_csv, base, p, wide=wide)
    write_json(report, metrics)
    return metrics


@app.command()
@one_line_errors
def train_wav2lip(
    params: ParamsOption = Path("params.yaml"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    audio: Annotated[Path, typer.Option(help="audio feature store (mel windows)")] = Path("data/features/audio.zarr"),
    wide: WideOption = Path("data/wide"),
    wide_audio: WideAudioOption = Path("data/features/wide_audio.zarr"),
    expert: Annotated[Path, typer.Option(help="SyncNet_color expert (syncnet.pt or lipsync_expert.pth)")] = Path(
        "data/models/syncnet.pt"),
    out: Annotated[Path, typer.Option(help="checkpoint to write")] = Path("data/models/wav2lip.pt"),
    report: Annotated[Path, typer.Option(help="held-out metrics JSON")] = Path("data/reports/wav2lip.json"),
    losses: Annotated[Path, typer.Option(help="loss log CSV (DVC plot)")] = Path("data/reports/wav2lip_losses.csv"),
) -> None:
    """Train the Wav2Lip generator (L1 + expert sync loss) on corpus windows, or import official weights."""
    base, p = load_section("base", params), load_section("train_wav2lip", params)
    run_ranks(base.processes, "stages.train_wav2lip")
    metrics = run_train_wav2lip(corpus, audio, expert, out, report, losses, base, p, wide=(wide, wide_audio))
    typer.echo(json.dumps(metrics))


if __name__ == "__main__":
    app()
