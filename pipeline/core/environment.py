"""`emmn env`: what this machine runs the pipeline with, in one block users paste into bug reports.

Speed and results depend on the CPU (AVX2 vs AVX-512 bf16), the resolved precision, the thread count and
the tool binaries found; this gathers them without touching any data.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from pipeline.core.precision import cpu_capability, resolve_precision

PACKAGES = ("dvc", "zarr", "numcodecs", "dask", "numpy", "librosa", "opencv-python-headless", "typer", "pyarrow",
            "pandas")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _ffmpeg() -> str:
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        first = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=20).stdout.splitlines()
        return f"{exe} ({first[0] if first else 'version unknown'})"
    except Exception as exc:  # a report tool: say what is wrong instead of failing
        return f"not found ({type(exc).__name__}: {exc})"


def _espeak() -> str:
    try:
        import espeakng_loader

        return f"{espeakng_loader.get_library_path()} (data {espeakng_loader.get_data_path()})"
    except Exception as exc:
        return f"not found ({type(exc).__name__}: {exc})"


def describe_environment(precision_setting: str = "auto", device_setting: str = "auto") -> dict[str, str]:
    """Name -> value of everything that decides how (and how fast) the pipeline runs here."""
    from pipeline.core.precision import pick_device

    device = pick_device(device_setting)
    precision = resolve_precision(precision_setting, device)
    cuda = (f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s))"
            if torch.cuda.is_available()
            else "none" + (f" (torch built for CUDA {torch.version.cuda})" if torch.version.cuda else " (CPU-only torch)"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "emmn": _version("emmn"),
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "gpu": cuda,
        "device": f"{device} (base.device {device_setting})",
        "cpu": cpu_model(),
        "cpu capability": cpu_capability(),
        "native bf16": "yes" if precision.native_bf16 else "no",
        "precision": precision.describe(),
        "cores": f"{cores} usable, torch threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()})",
        "ffmpeg": _ffmpeg(),
        "espeak-ng": _espeak(),
        **{package: _version(package) for package in PACKAGES},
    }


def format_environment(info: dict[str, str]) -> str:
    width = max(map(len, info))
    return "\n".join(f"{name:<{width}}  {value}" for name, value in info.items())


__all__ = ["cpu_model", "describe_environment", "format_environment"]
