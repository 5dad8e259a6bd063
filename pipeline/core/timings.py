"""Wall-clock timings of a stage, kept out of every DVC-tracked output.

A rerun that reproduces the same weights must leave its outputs byte-identical, or every stage downstream
goes stale (hours on the default profile). Seconds differ from run to run, so they are written to
`<output>.timings.json` beside the stage's main output: no stage declares it, git ignores it
(`*.timings.json`), and it records the machine the seconds were measured on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.core.store import write_text

SUFFIX = ".timings.json"


def timings_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + SUFFIX)


def read_timings(output: str | Path) -> dict[str, Any]:
    """The timings recorded for `output`, or {} (none yet, or unreadable: they are only informative)."""
    path = timings_path(output)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_timings(output: str | Path, values: Mapping[str, Any]) -> Path:
    """Replace the timings of `output` with `values` plus the machine they were measured on."""
    from pipeline.core.precision import cpu_capability

    record = {**values, "machine": {"cpu": cpu_capability(), "torch_threads": torch.get_num_threads()}}
    path = timings_path(output)
    write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def pop_timings(folder: str | Path) -> dict[str, Any]:
    """Remove every timings file under `folder` and return them keyed by their output's relative path: a stage
    whose output is a folder (table2 trains models inside one) moves them out before DVC hashes it."""
    folder = Path(folder)
    found = {}
    for path in sorted(folder.rglob(f"*{SUFFIX}")):
        output = path.with_name(path.name[: -len(SUFFIX)])
        found[str(output.relative_to(folder))] = read_timings(output)
        path.unlink()
    return found


__all__ = ["SUFFIX", "pop_timings", "read_timings", "timings_path", "write_timings"]
