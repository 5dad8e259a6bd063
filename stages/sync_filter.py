"""`sync_filter` stage (paper §3.2): SyncNet offset and confidence of every pseudo clip; keep the synced ones.

    python -m stages.sync_filter                 # what dvc repro runs
    emmn sync_filter --params params.yaml
Reads data/pseudo/ (frames.zarr, clips.parquet, pairs.parquet), the corpus (audio, source frames) and
the scorer: data/models/sync_scorer.pt (a SyncNet_color Wav2Lip never trained against; its own expert
would be biased towards Wav2Lip's output), or `sync_filter.weights` (e.g. the official syncnet_v2.model).
Writes data/pseudo/sync.parquet (offset, confidence = LSE-C, min_dist = LSE-D for each pseudo clip and
for its original mouths against the same audio, kept), the histogram data/reports/sync_filter_hist.png
and data/reports/pseudo_pairs.json (mouth_err_all, mouth_err_kept, kept_fraction, threshold, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import load_section
from pipeline.lipsync.sync_filter import run_sync_filter
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


@app.command()
@one_line_errors
def sync_filter(
    params: ParamsOption = Path("params.yaml"),
    pseudo: Annotated[Path, typer.Option(help="pseudo_pairs output folder")] = Path("data/pseudo"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    scorer: Annotated[Path, typer.Option(help="scorer when sync_filter.weights is unset")] = Path(
        "data/models/sync_scorer.pt"),
    report: Annotated[Path, typer.Option(help="report JSON")] = Path("data/reports/pseudo_pairs.json"),
    hist: Annotated[Path, typer.Option(help="confidence histogram PNG")] = Path("data/reports/sync_filter_hist.png"),
) -> None:
    """Score every pseudo clip (syncnet_python offset/confidence), keep the synced ones, report mouth errors."""
    base, p = load_section("base", params), load_section("sync_filter", params)
    weights = Path(p.weights) if p.weights else scorer
    summary = run_sync_filter(pseudo, corpus, weights, report, hist, base, p)
    typer.echo(json.dumps(summary))


if __name__ == "__main__":
    app()
