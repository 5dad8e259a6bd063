"""dvc.yaml's code deps are each stage's import closure, exactly (tests/dvc_closure.py derives them): a stage
re-runs when code it runs changes, and only then."""

from __future__ import annotations

import yaml

from tests.dvc_closure import ROOT, disagreements, required_deps


def test_every_stage_depends_on_exactly_the_code_it_imports():
    wrong = disagreements()
    assert not wrong, ("dvc.yaml code deps differ from the import closures (fix: python -m tests.dvc_closure "
                       f"--write): {wrong}")


def test_a_missing_or_unused_dep_is_caught(tmp_path):
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    cmd = stages["train_motion"]["cmd"]
    needed = required_deps(cmd)
    assert "pipeline/motion/train.py" in needed and "stages/train_motion.py" in needed
    assert "pipeline/render/generate.py" not in needed  # upstream stages do not depend on downstream code
    broken = {"stages": {"train_motion": {"cmd": cmd, "deps": [d for d in needed if d != "pipeline/motion/train.py"]
                                          + ["pipeline/render/generate.py", "data/pseudo"]}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(broken))
    assert disagreements(tmp_path / "dvc.yaml") == {
        "train_motion": {"missing": ["pipeline/motion/train.py"], "unused": ["pipeline/render/generate.py"]}}
