"""Paper Table 2 analogue: train the five Motion Reconstruction rows and write data/reports/table2.md.

    .venv/bin/python scripts/table2_motion.py                       # default params: ~5 x train_motion.max_minutes
    .venv/bin/python scripts/table2_motion.py --profile profiles/tiny.yaml --rows full no_rec
Needs the inputs of `train_motion` and `motion_report` (dvc repro motion_report). Each row (full, w/o L_rec,
w/o L_self, w/o L_e/m-con, w/o filter) is trained in this process through the stage's worker with one
switch changed, into --work/<row>/ (motion.pt, losses.csv/png, motion.json); the table goes to --out.
The same rows one by one through DVC instead:
    dvc exp run -S train_motion.use_rec=false     (use_self / use_con / use_filter likewise)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from pipeline.config import SECTIONS, build_section, deep_merge, read_yaml
from pipeline.motion_ablation import TABLE2_ROWS, run_table2
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
    params: Annotated[Path, typer.Option(help="params.yaml (base, train_motion, motion_report)")] = Path("params.yaml"),
    profile: Annotated[Path | None, typer.Option(help="profile overlaid on params, e.g. profiles/tiny.yaml")] = None,
    keypoints: Annotated[Path, typer.Option(help="keypoint store")] = Path("data/features/keypoints.zarr"),
    pseudo: Annotated[Path, typer.Option(help="pseudo_pairs folder")] = Path("data/pseudo"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    work: Annotated[Path, typer.Option(help="per-row outputs")] = Path("data/ablations/motion"),
    out: Annotated[Path, typer.Option(help="the table")] = Path("data/reports/table2.md"),
    rows: Annotated[list[str] | None, typer.Option(help=f"subset of {[r[0] for r in TABLE2_ROWS]}")] = None,
) -> None:
    """Train the Table 2 rows and write them as one Markdown table."""
    data = load_params(params, profile)
    sections = {name: build_section(SECTIONS[name], data.get(name), where=str(params), name=name)
                for name in ("base", "train_motion", "motion_report")}
    run_table2(keypoints, pseudo, corpus, work, out, sections["base"], sections["train_motion"],
               sections["motion_report"], rows=tuple(rows) if rows else None)
    typer.echo(out.read_text())


if __name__ == "__main__":
    app()
