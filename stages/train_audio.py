"""`train_audio` stage: EVP's emotion/content disentanglement of speech (EMMN 3.3), trained on the corpus.

    python -m stages.train_audio                 # what dvc repro runs
    emmn train_audio --params params.yaml
Writes data/models/audio.pt (AudioEncoders: E_c, E_e, decoder, classifier; `load_audio_encoders`), the
held-out report data/reports/audio.json (emotion_acc_from_ee, emotion_acc_from_ec, reconstruction errors,
per-emotion accuracy), its confusion matrix data/reports/audio_confusion.png, the loss log
data/reports/audio_losses.csv (DVC plot, x = step). `train_audio.pretrained: <EVP
<epoch>_pretrain.pth>` imports EVP's released weights instead of training (then only evaluated).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.audio.train import run_train_audio
from pipeline.core.config import load_section
from stages.common import ParamsOption, one_line_errors, run_ranks, stage_app

app = stage_app()


@app.command()
@one_line_errors
def train_audio(
    params: ParamsOption = Path("params.yaml"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    audio: Annotated[Path, typer.Option(help="audio feature store (MFCC windows)")] = Path("data/features/audio.zarr"),
    prosody: Annotated[Path, typer.Option(help="prosody store (pitch, loudness, voice baselines)")] = Path(
        "data/features/prosody.zarr"),
    out: Annotated[Path, typer.Option(help="checkpoint to write")] = Path("data/models/audio.pt"),
    report: Annotated[Path, typer.Option(help="held-out metrics JSON")] = Path("data/reports/audio.json"),
    losses: Annotated[Path, typer.Option(help="loss log CSV (DVC plot)")] = Path("data/reports/audio_losses.csv"),
    confusion_png: Annotated[Path, typer.Option(help="held-out confusion matrix PNG")] = Path(
        "data/reports/audio_confusion.png"),
) -> None:
    """Train the audio content/emotion encoders (EVP disentanglement) or import EVP's weights; held-out report."""
    base, p = load_section("base", params), load_section("train_audio", params)
    run_ranks(base.processes, "stages.train_audio")
    metrics = run_train_audio(corpus, audio, out, report, losses, confusion_png, base, p,
                              prosody_store=prosody)
    typer.echo(json.dumps({k: metrics[k] for k in ("emotion_acc_from_ee", "emotion_acc_from_ec", "cross_rec_err")}))


if __name__ == "__main__":
    app()
