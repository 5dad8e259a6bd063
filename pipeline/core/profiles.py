"""Profiles: named settings of the whole pipeline, switched with one command (`emmn profile <name>`).

A profile is the built-in defaults (the params dataclasses, equal to the committed params.yaml) with the overlay
`profiles/<name>.yaml` merged over them (`deep_merge`: nested mappings merge, other values replace); `default` has
no overlay. `write_profile` sets params.yaml to a profile's values, changing only the keys that differ (comments
kept), so a switch works from any profile to any other, and DVC re-runs only the stages whose params changed:

    emmn profile quick && dvc repro          # or `dvc exp run -n quick` to keep it as a DVC experiment
    emmn profile default                     # back to the defaults (the values; `git checkout params.yaml` too)

(DVC's Hydra composition would need the defaults moved into conf/ and rewrites params.yaml without its comments;
this keeps params.yaml the one annotated source of defaults.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import (
    SECTIONS,
    BaseParams,
    as_dict,
    build_section,
    deep_merge,
)
from pipeline.core.errors import InputError

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
DEFAULT = "default"


def profile_names(folder: Path = PROFILES_DIR) -> list[str]:
    return [DEFAULT, *sorted(p.stem for p in folder.glob("*.yaml"))]


def plain(value: Any) -> Any:
    """Tuples as lists, recursively: what YAML gives back."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def default_params() -> dict[str, dict[str, Any]]:
    """Every section's built-in defaults, as params.yaml spells them."""
    return plain({"base": as_dict(BaseParams()), **{name: as_dict(cls()) for name, cls in SECTIONS.items()}})


def profile_params(name: str, folder: Path = PROFILES_DIR) -> dict[str, dict[str, Any]]:
    """The full params of profile `name`; every key checked against its section (a typo fails here)."""
    params = default_params()
    if name != DEFAULT:
        path = folder / f"{name}.yaml"
        if not path.is_file():
            raise InputError(path, f"no such profile; there are: {', '.join(profile_names(folder))}")
        overlay = yaml.safe_load(path.read_text()) or {}
        unknown = sorted(set(overlay) - set(params))
        if unknown:
            raise InputError(path, f"unknown sections {unknown}")
        params = deep_merge(params, overlay)
    for section, cls in {"base": BaseParams, **SECTIONS}.items():
        build_section(cls, params[section], where=str(folder / f"{name}.yaml"), name=section)
    return params


def write_profile(params_file: Path, wanted: dict[str, dict[str, Any]]) -> list[str]:
    """Rewrite `params_file` so that it holds `wanted`, changing only the values that differ (ruamel round trip:
    comments, order and the untouched lines stay as they are). Returns the `section.key`s it changed."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    def flow(value: Any) -> Any:  # new lists and mappings in the file's one-line style
        if isinstance(value, dict):
            node = CommentedMap((k, flow(v)) for k, v in value.items())
        elif isinstance(value, list):
            node = CommentedSeq(flow(v) for v in value)
        else:
            return value
        node.fa.set_flow_style()
        return node

    yaml_rt = YAML()
    yaml_rt.width = 4096
    yaml_rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = yaml_rt.load(params_file.read_text())
    changed = []
    for section, values in wanted.items():
        if doc.get(section) is None:
            doc[section] = CommentedMap()
        for key, value in values.items():
            if plain(doc[section].get(key)) != value or key not in doc[section]:
                doc[section][key] = flow(value)
                changed.append(f"{section}.{key}")
    text = io.StringIO()
    yaml_rt.dump(doc, text)
    params_file.write_text(text.getvalue())
    return changed
