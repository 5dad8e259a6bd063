"""`train_memory` stage: stage-1 training of EMMN's audio-to-motion network (paper Eq. 6-14).

    python -m stages.train_memory                      # what dvc repro runs
    emmn train_memory --params params.yaml
    python -m stages.train_memory --variant mmn --out data/models/emmn_mmn.pt --report data/reports/memory_mmn.json
Writes data/models/emmn.pt (EmmnNet with the frozen audio encoders and D_em embedded: `load_emmn` needs nothing
else), data/reports/memory.json (held-out actors: slots_used, align_kl, retrieval_err, keypoint errors) and the
loss log data/reports/memory_losses.csv (DVC plot). `--variant` overrides train_memory.variant, for
the paper's ablations (baseline, mmn) from the same code. With train_memory.pretrain_wide, each step also trains
on windows of the wide set (data/wide with its wide_motion / wide_audio / wide_prosody stores), LRW's role.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.audio.prosody import DEFAULT_STORE as DEFAULT_PROSODY_STORE
from pipeline.core.config import BaseParams, TrainMemoryParams, load_section, with_field
from pipeline.core.errors import InputError
from pipeline.core.store import write_json
from pipeline.memory.train import WideInputs, train_memory_model
from pipeline.models.emmn import VARIANTS
from stages.common import (
    ParamsOption,
    WideAudioOption,
    WideOption,
    one_line_errors,
    run_ranks,
    stage_app,
)

app = stage_app()


def run_train_memory(corpus_dir: Path, keypoints: Path, motion_store: Path, audio_store: Path, audio_model: Path,
                     motion_model: Path, model_out: Path, report: Path, losses_csv: Path, base: BaseParams,
                     p: TrainMemoryParams, prosody_store: Path = DEFAULT_PROSODY_STORE,
                     wide: WideInputs | None = None) -> dict:
    """Train, write the checkpoint, the report and the loss log; return the report."""
    if p.variant not in VARIANTS:
        raise InputError("params.yaml", f"train_memory.variant must be one of {list(VARIANTS)}, not '{p.variant}'")
    summary = train_memory_model(corpus_dir, keypoints, motion_store, audio_store, audio_model, motion_model,
                                 model_out, losses_csv, base, p, prosody_store=prosody_store, wide=wide)
    write_json(report, summary)
    return summary


@app.command()
@one_line_errors
def train_memory(
    params: ParamsOption = Path("params.yaml"),
    variant: Annotated[str | None, typer.Option(help="override train_memory.variant: emmn | baseline | mmn")] = None,
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    keypoints: Annotated[Path, typer.Option(help="keypoints.zarr (targets, p_neu)")] = Path(
        "data/features/keypoints.zarr"),
    motion_store: Annotated[Path, typer.Option(help="motion.zarr (f_e, f_m)")] = Path("data/features/motion.zarr"),
    audio_store: Annotated[Path, typer.Option(help="audio.zarr (mfcc)")] = Path("data/features/audio.zarr"),
    prosody_store: Annotated[Path, typer.Option(help="prosody.zarr (pitch, loudness, voice baselines)")] = (
        DEFAULT_PROSODY_STORE),
    audio_model: Annotated[Path, typer.Option(help="frozen e_c / e_e encoders (audio.pt with pretrain_mouth's E_c)")] = (
        Path("data/models/audio_mouth.pt")),
    motion_model: Annotated[Path, typer.Option(help="motion.pt (frozen D_em)")] = Path("data/models/motion.pt"),
    out: Annotated[Path, typer.Option(help="checkpoint to write")] = Path("data/models/emmn.pt"),
    report: Annotated[Path, typer.Option(help="report JSON")] = Path("data/reports/memory.json"),
    losses: Annotated[Path, typer.Option(help="loss log CSV (DVC plot)")] = Path("data/reports/memory_losses.csv"),
    wide: WideOption = Path("data/wide"),
    wide_motion: Annotated[Path, typer.Option(help="the wide set's motion store (decompose@wide)")] = Path(
        "data/features/wide_motion.zarr"),
    wide_audio: WideAudioOption = Path("data/features/wide_audio.zarr"),
    wide_prosody: Annotated[Path, typer.Option(help="the wide set's prosody store (prosody@wide)")] = Path(
        "data/features/wide_prosody.zarr"),
) -> None:
    """Train E_i, D_m and the Motion Memory-Net (Eq. 14) on the training actors; report on held-out actors."""
    base, p = load_section("base", params), load_section("train_memory", params)
    run_ranks(base.processes, "stages.train_memory")
    if variant is not None:
        p = with_field(p, variant=variant)
    summary = run_train_memory(corpus, keypoints, motion_store, audio_store, audio_model, motion_model, out, report,
                               losses, base, p, prosody_store, WideInputs(wide, wide_motion, wide_audio, wide_prosody))
    typer.echo(json.dumps({k: summary[k] for k in ("slots_used", "align_kl", "retrieval_err", "keypoint_l1")}))


if __name__ == "__main__":
    app()
