#!/usr/bin/env bash
# GPU check (bench/gpu_check.py): the quick profile's whole `dvc repro` on CUDA with per-stage times, then
# `emmn generate` frames per second at 128 and 256 px (vox-256). Run it after the README's install command;
# it installs nothing. Target: under 8 minutes on one H100.
#   bench/gpu_check.sh                      # --device cuda --profile quick --sizes "128 256"
#   bench/gpu_check.sh --device cpu         # the same on the CPU
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="$root/.venv/bin/python"
[ -x "$python" ] || python="$(command -v python3)"
exec "$python" "$root/bench/gpu_check.py" "$@"
