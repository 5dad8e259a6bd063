"""One source of defaults: every params dataclass's defaults equal params.yaml key for key, so `emmn generate`
outside the repository (built-in defaults) and `dvc repro` (params.yaml) run the same settings."""

from __future__ import annotations

import dataclasses

import yaml

from pipeline.core.config import SECTIONS, BaseParams, build_section
from tests.conftest import ROOT


def test_dataclass_defaults_are_params_yaml():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(params) == {"base", *SECTIONS}, "params.yaml has one section per stage plus base"
    differ = []
    for name, cls in {"base": BaseParams, **SECTIONS}.items():
        fields = [f.name for f in dataclasses.fields(cls)]
        assert set(params[name]) == set(fields), f"{name}: params.yaml keys {sorted(set(params[name]) ^ set(fields))}"
        from_yaml, default = build_section(cls, params[name], name=name), cls()
        differ += [f"{name}.{k}: {getattr(default, k)!r} vs {getattr(from_yaml, k)!r}" for k in fields
                   if getattr(default, k) != getattr(from_yaml, k)]
    assert not differ, differ
