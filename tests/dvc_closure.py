"""Each DVC stage's code deps derived from the code: the import closure (module-level and lazy imports) of the
`stages.<name>` module its cmd runs, inside this repository.

Params are exact keys (a whole section would re-run training when a run-only knob such as `threads` changes).
`python -m tests.dvc_closure` prints where dvc.yaml disagrees; `--write` rewrites the code entries of every
stage's deps and expands whole-section params into their keys minus RUN_ONLY (data deps, comments kept). tests/test_dvc_deps.py fails on any
disagreement, so a new import cannot go unnoticed by DVC and a dep nothing imports cannot linger.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import yaml

from pipeline.core.config import (
    RUN_ONLY,  # knobs that change how a run goes, never what it produces
)

ROOT = Path(__file__).resolve().parents[1]
CODE_ROOTS = ("pipeline", "stages")


def module_file(name: str) -> Path | None:
    """pipeline.a.b -> pipeline/a/b.py or pipeline/a/b/__init__.py (None outside the repository's code)."""
    if name.split(".")[0] not in CODE_ROOTS:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=None)
def direct_imports(path: Path) -> frozenset[Path]:
    """Repository files `path` imports anywhere in its body (lazy imports count: the code may run them), plus the
    package __init__ files Python runs on the way."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    found = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # parent packages run their __init__ first
            file = module_file(".".join(parts[:i]))
            if file is not None:
                found.add(file)
    return frozenset(found)


def closure(entry: Path) -> set[Path]:
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(direct_imports(path) - seen)
    return seen


def is_trivial(path: Path) -> bool:
    """A package __init__ holding only a docstring: importing it cannot change an output."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                                               for n in body)


def stage_module(cmd: str) -> Path:
    match = re.match(r"\s*python -m (stages\.\w+)", " ".join(cmd) if isinstance(cmd, list) else cmd)
    assert match, f"stage cmd is not `python -m stages.<name>`: {cmd}"
    return module_file(match.group(1))


def required_deps(cmd: str) -> list[str]:
    """Every repository code file the stage's command imports (trivial package inits left out), sorted."""
    return sorted(str(p.relative_to(ROOT)) for p in closure(stage_module(cmd)) if not is_trivial(p))


def is_code(dep: str) -> bool:
    return dep.split("/")[0] in CODE_ROOTS


def stage_bodies(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, dict]:
    """stage name -> its definition; a `foreach` stage's `do` template stands for all its items (they share
    cmd module, deps and params)."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def expanded_stages(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, dict]:
    """Every stage as `dvc repro` names it: a `foreach` stage becomes `name@key` per item, its `do` template
    filled in (${key}, ${item.field})."""
    import json

    out = {}
    for name, stage in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        items = stage["foreach"]
        for key, item in (items.items() if isinstance(items, dict) else ((i, i) for i in items)):
            text = json.dumps(stage["do"]).replace("${key}", str(key)).replace("${item}", str(item))
            for field, value in (item.items() if isinstance(item, dict) else ()):
                text = text.replace("${item.%s}" % field, str(value))
            out[f"{name}@{key}"] = json.loads(text)
    return out


def entry_paths(entries) -> list[str]:
    """Paths of a dvc.yaml deps / outs / metrics / plots list (plain strings or one-key dicts)."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def stage_outputs(stages: dict[str, dict]) -> set[str]:
    return {p for s in stages.values() for kind in ("outs", "metrics", "plots") for p in entry_paths(s.get(kind))}


def is_under(path: str, roots: set[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def copy_sources(repo: Path) -> None:
    """The project's files as a fresh checkout has them (tracked + untracked, not ignored), minus dvc.lock,
    params.yaml (the caller writes its own) and stage outputs: the e2e test's and bench/gpu_check.py's scratch
    repositories.

    Derived from git rather than listed here, so a new code file, vendored asset or dvc.yaml dep travels along.
    """
    stages = expanded_stages()
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    outputs = stage_outputs(stages)
    for rel in filter(None, listed):
        src = ROOT / rel
        if rel in ("dvc.lock", "params.yaml") or is_under(rel, outputs) or not src.is_file():
            continue
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, repo / rel)
    missing = [d for s in stages.values() for d in entry_paths(s.get("deps"))
               if not is_under(d, outputs) and not (repo / d).exists()]
    assert not missing, f"dvc.yaml deps the temp repo lacks (not in git?): {missing}"


def disagreements(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, dict[str, list[str]]]:
    """stage -> {"missing": imported but not a dep, "unused": a code dep nothing imports}."""
    out = {}
    for name, stage in stage_bodies(dvc_yaml).items():
        required = set(required_deps(stage["cmd"]))
        listed = {d for d in stage.get("deps", []) if is_code(d)}
        covered = {r for r in required if any(r == d or r.startswith(d.rstrip("/") + "/") for d in listed)}
        unused = sorted(d for d in listed if not any(r == d or r.startswith(d.rstrip("/") + "/") for r in required))
        missing = sorted(required - covered)
        if missing or unused:
            out[name] = {"missing": missing, "unused": unused}
    return out


def section_keys(section: str, params_yaml: Path = ROOT / "params.yaml") -> list[str]:
    """`section.key` for every key of a params.yaml section except the run-only knobs."""
    values = yaml.safe_load(params_yaml.read_text())[section]
    return [f"{section}.{key}" for key in values if key not in RUN_ONLY]


def params_problems(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, list[str]]:
    """stage -> params entries that are whole sections (hashed whole, run-only knobs included) or run-only keys."""
    out = {}
    for name, stage in stage_bodies(dvc_yaml).items():
        bad = [p for p in stage.get("params", []) if isinstance(p, str)
               and ("." not in p or p.split(".", 1)[1] in RUN_ONLY)]
        if bad:
            out[name] = bad
    return out


def rewrite(dvc_yaml: Path = ROOT / "dvc.yaml") -> None:
    """Replace each stage's code deps by its import closure (files, sorted), after its data deps."""
    stages = stage_bodies(dvc_yaml)
    lines = dvc_yaml.read_text().split("\n")
    out, stage, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        head = re.match(r"^  (\w+):", line)
        if head:
            stage = head.group(1)
        deps = re.match(r"^(    |      )deps:\s*(&\w+)?\s*$", line)  # a plain stage's, or a foreach's `do`
        if stage and deps:
            item = " " * (len(deps.group(1)) + 2) + "- "
            out.append(line)
            i += 1
            block = []
            while i < len(lines) and (lines[i].startswith(item) or lines[i].strip().startswith("#")):
                block.append(lines[i])
                i += 1
            data = [b for b in block if not (b.startswith(item) and is_code(b[len(item):].strip()))]
            out.extend(data + [f"{item}{d}" for d in required_deps(stages[stage]["cmd"])])
            continue
        whole = re.match(r"^      - (\w+)\s*$", line)
        if stage and whole and out and any(re.match(r"^    params:", o) for o in out[-40:]) and \
                whole.group(1) in (yaml.safe_load((ROOT / "params.yaml").read_text()) or {}):
            out.extend(f"      - {key}" for key in section_keys(whole.group(1)))  # a whole section -> its keys
            i += 1
            continue
        run_only = re.match(r"^ {6,8}- \w+\.(\w+)\s*$", line)
        if stage and run_only and run_only.group(1) in RUN_ONLY:
            i += 1
            continue
        out.append(line)
        i += 1
    dvc_yaml.write_text("\n".join(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps from the code")
    args = parser.parse_args()
    if args.write:
        rewrite()
    for name, diff in disagreements().items():
        print(f"{name}: missing {diff['missing']}; unused {diff['unused']}")
    for name, bad in params_problems().items():
        print(f"{name}: params {bad} (whole sections or run-only knobs)")


if __name__ == "__main__":
    main()
