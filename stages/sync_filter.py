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

import pandas as pd
import typer

from pipeline.core.config import BaseParams, SyncFilterParams, load_section
from pipeline.core.errors import InputError
from pipeline.core.histogram_plot import draw_histograms
from pipeline.core.parallel import dask_client, ordered_map
from pipeline.core.store import atomic_output, read_index, write_json
from pipeline.corpus.manifest import read_manifest
from pipeline.lipsync.io import load_syncnet_any
from pipeline.lipsync.sync_filter import (
    ScoreTask,
    keep_mask,
    pseudo_report,
    score_pseudo_clip,
)
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


def run_sync_filter(pseudo_dir: Path, corpus_dir: Path, weights: Path, report: Path, hist_png: Path,
                    base: BaseParams, p: SyncFilterParams, log=print) -> dict:
    """Score, filter, and write sync.parquet, the histogram and the report; return the report."""
    clips_path = pseudo_dir / "clips.parquet"
    if not clips_path.is_file():
        raise InputError(clips_path, "pseudo clips table not found (run pseudo_pairs first)")
    clips = pd.read_parquet(clips_path)
    pairs = pd.read_parquet(pseudo_dir / "pairs.parquet") if (pseudo_dir / "pairs.parquet").is_file() else None
    loaded = load_syncnet_any(weights)  # fail here, in one line, before any worker starts
    index = read_index(pseudo_dir / "frames.zarr").set_index("clip_id")
    sources = read_manifest(corpus_dir).set_index("clip_id")
    tasks = []
    for row in clips.itertuples():
        if row.pseudo_clip_id not in index.index:
            raise InputError(pseudo_dir / "frames.zarr", f"clip '{row.pseudo_clip_id}' is missing from the store")
        src = sources.loc[row.source_clip_id]
        tasks.append(ScoreTask(row.pseudo_clip_id, str(pseudo_dir / "frames.zarr"),
                               (int(index.loc[row.pseudo_clip_id, "start"]), int(index.loc[row.pseudo_clip_id, "stop"])),
                               str(corpus_dir), (int(src.start), int(src.stop)), str(corpus_dir / row.wav_path),
                               str(weights)))
    with dask_client(base.workers, base.scheduler_address) as client:
        rows = list(ordered_map(score_pseudo_clip, tasks, client=client, window=4 * max(base.workers, 1),
                                description="sync_filter: scoring"))
    scores = pd.DataFrame(rows)
    scores["kept"] = keep_mask(scores, p.threshold, p.max_offset)
    with atomic_output(pseudo_dir / "sync.parquet") as tmp:
        scores.to_parquet(tmp, index=False)
    scorer_name = f"{loaded.arch} ({weights})"
    draw_histograms({"re-dubbed": scores.confidence.to_numpy(), "original mouth": scores.confidence_original.to_numpy()},
                    hist_png, bins=p.hist_bins, threshold=p.threshold, xlabel="sync confidence (LSE-C)",
                    title=f"sync_filter: {int(scores.kept.sum())}/{len(scores)} kept, scorer {loaded.arch}")
    summary = pseudo_report(clips, scores, pairs if pairs is not None else pd.DataFrame(columns=["y_ib", "y_ja"]),
                            p.threshold, p.max_offset, scorer_name)
    write_json(report, summary)
    log(f"sync_filter: kept {summary['kept_clips']}/{summary['pseudo_clips']}; mouth error all "
        f"{summary['mouth_err_all']} px, kept {summary['mouth_err_kept']} px")
    return summary


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
