"""The layout shows the architecture: one package per paper section, each documented, and the import contract
(pyproject.toml [tool.importlinter]) holds: a section imports only core, training, models and the sections
upstream of it in the DVC graph; the library never imports the CLI layer."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

SECTIONS = ("core", "training", "models", "corpus", "audio", "judges", "lipsync", "fomm", "motion", "memory",
            "render", "evaluation")


def test_pipeline_top_level_is_the_section_packages():
    top = sorted(p.name for p in (ROOT / "pipeline").iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file())
    assert top == sorted(["__init__.py", *SECTIONS]), top


def test_every_section_package_says_what_it_serves():
    for name in SECTIONS:
        doc = ast.get_docstring(ast.parse((ROOT / "pipeline" / name / "__init__.py").read_text()))
        assert doc and len(doc) > 40, f"pipeline/{name}/__init__.py needs a docstring (paper section, stages)"


def test_import_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in proc.stdout
