"""Shared fixtures: the tiny profile and a tiny built-in corpus built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.core.config import SECTIONS, build_section, deep_merge

ROOT = Path(__file__).resolve().parents[1]


def tiny_params_dict() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return deep_merge(params, yaml.safe_load((ROOT / "profiles" / "tiny.yaml").read_text()))


def tiny_section(name: str, **changes):
    values = dict(tiny_params_dict().get(name) or {})
    values.update(changes)
    return build_section(SECTIONS[name], values, name=name)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    from pipeline.corpus.build import build_corpus

    out = tmp_path_factory.mktemp("corpus") / "corpus"
    build_corpus(out, tiny_section("base"), tiny_section("corpus"))
    return out
