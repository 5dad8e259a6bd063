"""`finetune_render` stage (paper §3.5, Eq. 15): the renderer fine-tuned on EmmnNet-driven frames.

    python -m stages.finetune_render             # what dvc repro runs
    emmn finetune_render --params params.yaml
Reads the corpus, audio.zarr, data/models/emmn.pt (frozen: predicts the driving keypoints) and
data/models/fomm.pt (the starting renderer). Writes data/models/emmn_render.pt (fomm.pt layout: E_k
unchanged + the fine-tuned generator, so `load_fomm` reads it), the loss log
data/reports/finetune_render_losses.csv, and data/reports/finetune_render.json (which loss was
used, held-out L1/PSNR before and after).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.audio.prosody import DEFAULT_STORE as DEFAULT_PROSODY_STORE
from pipeline.core.config import BaseParams, FinetuneRenderParams, load_section
from pipeline.core.store import write_json
from pipeline.render.finetune import finetune_render as finetune
from stages.common import ParamsOption, one_line_errors, run_ranks, stage_app

app = stage_app()


def run_finetune_render(corpus_dir: Path, audio_store: Path, emmn: Path, fomm: Path, model_out: Path,
                        losses_csv: Path, report: Path, base: BaseParams,
                        p: FinetuneRenderParams, prosody_store: Path = DEFAULT_PROSODY_STORE,
                        keypoints_store: Path = Path("data/features/keypoints.zarr")) -> dict:
    """Fine-tune, write the report; return the metrics."""
    metrics = finetune(corpus_dir, audio_store, emmn, fomm, model_out, losses_csv, base, p,
                       prosody_store=prosody_store, keypoints_store=keypoints_store)
    write_json(report, metrics)
    return metrics


@app.command()
@one_line_errors
def finetune_render(
    params: ParamsOption = Path("params.yaml"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    audio_features: Annotated[Path, typer.Option(help="audio.zarr")] = Path("data/features/audio.zarr"),
    prosody: Annotated[Path, typer.Option(help="prosody.zarr (voice baselines)")] = DEFAULT_PROSODY_STORE,
    keypoints: Annotated[Path, typer.Option(help="keypoints.zarr (E_k's keypoints of the real frames; read when "
                                                 "real_keypoint_share > 0)")] = Path("data/features/keypoints.zarr"),
    emmn: Annotated[Path, typer.Option(help="emmn.pt from train_memory")] = Path("data/models/emmn.pt"),
    fomm: Annotated[Path, typer.Option(help="fomm.pt from train_fomm")] = Path("data/models/fomm.pt"),
    out: Annotated[Path, typer.Option(help="fine-tuned renderer to write")] = Path("data/models/emmn_render.pt"),
    losses: Annotated[Path, typer.Option(help="loss log CSV (DVC plot)")] = Path(
        "data/reports/finetune_render_losses.csv"),
    report: Annotated[Path, typer.Option(help="report JSON")] = Path("data/reports/finetune_render.json"),
) -> None:
    """Stage 2 (Eq. 15): fine-tune the FOMM renderer on frames driven by EmmnNet's predicted keypoints."""
    base, p = load_section("base", params), load_section("finetune_render", params)
    run_ranks(base.processes, "stages.finetune_render")
    metrics = run_finetune_render(corpus, audio_features, emmn, fomm, out, losses, report, base, p,
                                  prosody, keypoints)
    typer.echo(json.dumps({k: metrics[k] for k in ("loss", "steps", "heldout_psnr_before", "heldout_psnr_after")}))


if __name__ == "__main__":
    app()
