"""Paper Table 2 analogue outside DVC: the `table2` stage's worker with a params profile and a row subset.

    .venv/bin/python scripts/table2_motion.py                       # = python -m stages.table2 (dvc repro table2)
    .venv/bin/python scripts/table2_motion.py --profile profiles/tiny.yaml --rows full --rows no_rec
Needs the inputs of the `table2` stage (keypoints.zarr, data/pseudo, the corpus, a renderer, evaluator.pt).
Each row (full, w/o L_rec, w/o L_self, w/o L_e/m-con, w/o filter) is trained in turn with one train_motion
switch changed, rendered on held-out frames and scored; `fomm_keypoints` renders the targets' own keypoints.
The same rows one by one through DVC instead (train_motion's own model, keypoint-space motion.json):
    dvc exp run -S train_motion.use_rec=false     (use_self / use_con / use_filter likewise)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from pipeline.core.config import (
    SECTIONS,
    build_section,
    deep_merge,
    read_yaml,
    with_field,
)
from pipeline.evaluation.table2 import run_table2
from pipeline.motion.ablation import ROW_NAMES
from stages.common import one_line_errors

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def load_params(params: Path, profile: Path | None) -> dict:
    data = read_yaml(params)
    if profile is not None:
        data = deep_merge(data, yaml.safe_load(Path(profile).read_text()) or {})
    return data


@app.command()
@one_line_errors
def main(
    params: Annotated[Path, typer.Option(help="params.yaml (base, train_motion, motion_report, table2)")] = Path(
        "params.yaml"),
    profile: Annotated[Path | None, typer.Option(help="profile overlaid on params, e.g. profiles/tiny.yaml")] = None,
    keypoints: Annotated[Path, typer.Option(help="keypoint store")] = Path("data/features/keypoints.zarr"),
    pseudo: Annotated[Path, typer.Option(help="pseudo_pairs folder")] = Path("data/pseudo"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    renderer: Annotated[Path, typer.Option(help="renderer")] = Path("data/models/emmn_render.pt"),
    fomm: Annotated[Path, typer.Option(help="renderer when --renderer does not exist")] = Path("data/models/fomm.pt"),
    evaluator: Annotated[Path, typer.Option(help="the judges")] = Path("data/models/evaluator.pt"),
    work: Annotated[Path, typer.Option(help="per-row outputs")] = Path("data/ablations/motion"),
    report: Annotated[Path, typer.Option(help="the table's JSON")] = Path("data/reports/table2.json"),
    out: Annotated[Path, typer.Option(help="the table")] = Path("data/reports/table2.md"),
    rows: Annotated[list[str] | None, typer.Option(help=f"subset of {list(ROW_NAMES)}")] = None,
) -> None:
    """Train, render and score the Table 2 rows; write them as one Markdown table."""
    data = load_params(params, profile)
    sections = {name: build_section(SECTIONS[name], data.get(name), where=str(params), name=name)
                for name in ("base", "train_motion", "motion_report", "table2")}
    table = with_field(sections["table2"], rows=tuple(rows)) if rows else sections["table2"]
    run_table2(keypoints, pseudo, corpus, renderer, fomm, evaluator, work, report, out, sections["base"],
               sections["train_motion"], sections["motion_report"], table)
    typer.echo(out.read_text())


if __name__ == "__main__":
    app()
