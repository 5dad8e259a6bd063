"""Fixtures shared by the lip-sync tests: the tiny corpus's audio features (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import tiny_section


@pytest.fixture(scope="session")
def tiny_audio(tiny_corpus, tmp_path_factory) -> tuple[Path, Path]:
    """(corpus folder, audio.zarr) of the tiny profile."""
    from pipeline.audio.features import build_audio_features

    store = tmp_path_factory.mktemp("features") / "audio.zarr"
    build_audio_features(tiny_corpus, store, tiny_section("base"), tiny_section("audio_features"))
    return tiny_corpus, store


@pytest.fixture(scope="session")
def tiny_prosody(tiny_corpus, tmp_path_factory) -> Path:
    """prosody.zarr of the tiny profile (pitch, loudness, each actor's voice baseline)."""
    from pipeline.audio.prosody_features import build_prosody

    store = tmp_path_factory.mktemp("features") / "prosody.zarr"
    build_prosody(tiny_corpus, store, tiny_section("base"), tiny_section("prosody"))
    return store
