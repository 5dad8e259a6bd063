"""GPU check: a profile's whole `dvc repro` on one device with each stage's time, then `emmn generate` speed.

    bench/gpu_check.sh                                    # a GPU machine after the README's install: quick on CUDA
    bench/gpu_check.sh --device cpu --profile tiny --sizes 64 --workdir /tmp/run   # the CPU smoke test's form

Works in a scratch repository (the project's files as a fresh clone has them, params.yaml set to the profile and
`base.device`), so the checkout is left as it is; `--workdir` names it (kept), an existing one is reused as it
stands (its repro is then a no-op when nothing changed). Installs nothing. Prints a table of stage times, the
generate speed rows (bench/generate_speed.py) and the device; `--json` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.profiles import profile_params, write_profile  # noqa: E402


def scratch_repository(work: Path) -> None:
    """The checkout's files as a fresh clone has them (tests.dvc_closure.copy_sources, as the e2e test makes its
    repository) with this params.yaml, committed in a new git repository."""
    from tests.dvc_closure import copy_sources

    copy_sources(work)
    shutil.copy2(ROOT / "params.yaml", work / "params.yaml")
    git = ["git", "-c", "user.email=check@emmn", "-c", "user.name=check"]
    for cmd in (["git", "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-qm", "gpu check"]):
        subprocess.run(cmd, cwd=work, check=True, capture_output=True)


def timed_repro(work: Path, env: dict[str, str]) -> list[tuple[str, float]]:
    """`dvc repro` with each stage's wall time (from its "Running stage" line to the next one / the end)."""
    dvc = str(Path(sys.executable).with_name("dvc"))
    proc = subprocess.Popen([dvc, "repro"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    times: list[tuple[str, float]] = []
    started, name, tail = time.monotonic(), None, []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        found = re.search(r"Running stage '([^']+)'", line)
        if found:
            now = time.monotonic()
            if name is not None:
                times.append((name, now - started))
            name, started = found.group(1), now
            print(f"  running {name}", flush=True)
    if proc.wait() != 0:
        sys.stderr.write("".join(tail))
        raise SystemExit(f"dvc repro failed in {work}")
    if name is not None:
        times.append((name, time.monotonic() - started))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu", "auto"])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--sizes", default="128 256", help="generate speed at these sides (the run's own, 256)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    if not (work / "dvc.yaml").is_file():
        work.mkdir(parents=True, exist_ok=True)
        scratch_repository(work)
    wanted = profile_params(args.profile)
    wanted["base"]["device"] = args.device
    changed = write_profile(work / "params.yaml", wanted)
    print(f"gpu_check: {work}, profile {args.profile}, device {args.device} ({len(changed)} params set)", flush=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(work),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    t0 = time.monotonic()
    stages = timed_repro(work, env)
    total = time.monotonic() - t0
    print(f"\n{'stage':32s} {'seconds':>9s}")
    for name, seconds in stages:
        print(f"{name:32s} {seconds:9.1f}")
    print(f"{'dvc repro (all)':32s} {total:9.1f}\n", flush=True)
    speed_json = work / "generate_speed.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "generate_speed.py"), "--device", args.device,
                    "--sizes", *args.sizes.split(), "--iters", str(args.iters), "--json", str(speed_json),
                    "--params", "params.yaml"], cwd=work, env=env, check=True)
    device = subprocess.run([sys.executable, "-m", "stages.cli", "env"], cwd=work, env=env, capture_output=True,
                            text=True).stdout
    print(device)
    if args.json is not None:
        args.json.write_text(json.dumps({"profile": args.profile, "device": args.device, "repro_seconds": total,
                                         "stages": dict(stages), "generate": json.loads(speed_json.read_text()),
                                         "environment": device}, indent=2) + "\n")


if __name__ == "__main__":
    main()
