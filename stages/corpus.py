"""`corpus` stage: the built-in MEAD-shaped corpus (default) or a real MEAD folder, into data/corpus.

    python -m stages.corpus                      # what dvc repro runs
    emmn corpus --params params.yaml --out data/corpus
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.config import BaseParams, CorpusParams, load_section
from pipeline.core.errors import InputError
from pipeline.core.store import atomic_output, dir_size, write_json
from pipeline.core.timings import write_timings
from pipeline.corpus.sheet import corpus_contact_sheet
from stages.common import ParamsOption, one_line_errors, seed_everything, stage_app

app = stage_app()


def build_corpus(out_dir: Path, base: BaseParams, p: CorpusParams, params_path: Path = Path("params.yaml")) -> dict:
    """Write the corpus to out_dir atomically (nothing is left behind on failure); return a summary.
    `params_path`: the file `p` came from, named by errors about its settings."""
    seed_everything(base.seed)
    with atomic_output(out_dir) as tmp:
        if p.source == "builtin":
            from pipeline.corpus.builtin import generate_builtin

            manifest = generate_builtin(tmp, base, p)
        elif p.source == "mead":
            from pipeline.corpus.mead import ingest_mead

            if not p.mead_root:
                raise InputError(params_path, "corpus.source is 'mead' but corpus.mead_root is not set")
            manifest = ingest_mead(tmp, base, p)
        else:
            raise InputError(params_path, f"corpus.source must be 'builtin' or 'mead', not '{p.source}'")
    real = manifest[manifest.kind == "real"]
    return {
        "source": p.source,
        "clips": int(len(manifest)),
        "real_clips": int(len(real)),
        "counterfactual_clips": int(len(manifest) - len(real)),
        "actors": int(manifest.actor.nunique()),
        "frames": int(manifest.frames.sum()),
        "hours_of_video": round(float(manifest.frames.sum() / base.fps / 3600), 3),
        "size": p.size,
        "bytes_on_disk": dir_size(out_dir),
    }


@app.command()
@one_line_errors
def corpus(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="corpus folder to (re)write")] = Path("data/corpus"),
    sheet: Annotated[Path, typer.Option(help="contact sheet PNG")] = Path("data/reports/corpus_sheet.png"),
    report: Annotated[Path, typer.Option(help="summary JSON")] = Path("data/reports/corpus.json"),
) -> None:
    """Build the corpus (built-in synthetic or MEAD ingest): frames Zarr, wavs, landmarks, manifest."""
    base, p = load_section("base", params), load_section("corpus", params)
    t0 = time.monotonic()
    summary = build_corpus(out, base, p, params)
    write_timings(out, {"seconds": round(time.monotonic() - t0, 1)})  # not in the report: DVC tracks it
    corpus_contact_sheet(out, sheet)
    write_json(report, summary)
    typer.echo(json.dumps(summary))


if __name__ == "__main__":
    app()
