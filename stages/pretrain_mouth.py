"""`pretrain_mouth` stage: Audio2Mouth pre-training on the wide set (paper §4.1, LRW's role; Eq. 6).

    python -m stages.pretrain_mouth                    # what dvc repro runs
    emmn pretrain_mouth --params params.yaml

Writes data/models/audio_mouth.pt (audio.pt with the pre-trained content encoder E_c; train_memory reads it),
data/reports/pretrain_mouth.json (Audio2Mouth's mouth error on held-out actors and the wide set's held-out
identities, next to the mean predictor's) and the loss log data/reports/pretrain_mouth_losses.csv.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.audio.prosody import DEFAULT_STORE as DEFAULT_PROSODY_STORE
from pipeline.core.config import load_section
from pipeline.core.store import write_json
from pipeline.memory.pretrain import pretrain_mouth as run_pretrain_mouth
from pipeline.memory.train import WideInputs
from stages.common import (
    ParamsOption,
    WideAudioOption,
    WideOption,
    one_line_errors,
    run_ranks,
    stage_app,
)

app = stage_app()


@app.command()
@one_line_errors
def pretrain_mouth(
    params: ParamsOption = Path("params.yaml"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    keypoints: Annotated[Path, typer.Option(help="keypoints.zarr (p_neu)")] = Path("data/features/keypoints.zarr"),
    motion_store: Annotated[Path, typer.Option(help="motion.zarr (f_m targets)")] = Path("data/features/motion.zarr"),
    audio_store: Annotated[Path, typer.Option(help="audio.zarr (mfcc)")] = Path("data/features/audio.zarr"),
    prosody_store: Annotated[Path, typer.Option(help="prosody.zarr (for an emotion encoder that hears prosody)")] = (
        DEFAULT_PROSODY_STORE),
    audio_model: Annotated[Path, typer.Option(help="audio.pt from train_audio")] = Path("data/models/audio.pt"),
    motion_model: Annotated[Path, typer.Option(help="motion.pt (f_m's size)")] = Path("data/models/motion.pt"),
    out: Annotated[Path, typer.Option(help="audio encoders with the pre-trained E_c")] = Path(
        "data/models/audio_mouth.pt"),
    report: Annotated[Path, typer.Option(help="report JSON")] = Path("data/reports/pretrain_mouth.json"),
    losses: Annotated[Path, typer.Option(help="loss log CSV (DVC plot)")] = Path(
        "data/reports/pretrain_mouth_losses.csv"),
    wide: WideOption = Path("data/wide"),
    wide_motion: Annotated[Path, typer.Option(help="the wide set's motion store (decompose@wide)")] = Path(
        "data/features/wide_motion.zarr"),
    wide_audio: WideAudioOption = Path("data/features/wide_audio.zarr"),
    wide_prosody: Annotated[Path, typer.Option(help="the wide set's prosody store (prosody@wide)")] = Path(
        "data/features/wide_prosody.zarr"),
) -> None:
    """Pre-train the content encoder E_c with E_i and D_m on L_a2m (Eq. 6) over the wide set and the corpus."""
    base, p = load_section("base", params), load_section("pretrain_mouth", params)
    memory = load_section("train_memory", params)
    run_ranks(base.processes, "stages.pretrain_mouth")
    summary = run_pretrain_mouth(corpus, keypoints, motion_store, audio_store, audio_model, motion_model,
                                 WideInputs(wide, wide_motion, wide_audio, wide_prosody), out, losses, base, p, memory,
                                 prosody_store=prosody_store)
    write_json(report, summary)
    typer.echo(json.dumps({k: summary[k] for k in ("heldout", "wide_heldout")}))


if __name__ == "__main__":
    app()
