"""One precision setting for every network the pipeline runs: `base.precision: auto | fp32 | bf16`.

bf16 autocast halves a step only where the hardware computes bf16 natively (CUDA, or a CPU with AVX-512 bf16
/ AMX). On an AVX2-only CPU torch emulates it: a slim-128 FOMM frame took 10.6 s in bf16 vs 123 ms in fp32
(86x). So `auto` picks bf16 only where it is native, and asking for bf16 elsewhere prints a one-line warning.

The params value stays `auto` whatever the machine (DVC hashes the setting, not the outcome, so another CPU
does not re-run the pipeline); the resolved precision is written into each output (checkpoint metrics,
store attributes, reports) so a reader knows what produced it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

from pipeline.core.errors import InputError

SETTINGS = ("auto", "fp32", "bf16")


def cpu_capability() -> str:
    """The SIMD level torch's CPU kernels dispatch to (e.g. AVX2, AVX512), plus the bf16 extensions seen."""
    level = torch.backends.cpu.get_cpu_capability()
    extras = [name for name, present in (("AVX512_BF16", torch.cpu._is_avx512_bf16_supported()),
                                         ("AMX", torch.cpu._is_amx_tile_supported())) if present]
    return " ".join([level, *extras])


def cpu_has_native_bf16() -> bool:
    """True on CPUs that compute bf16 in hardware (AVX-512 BF16 or AMX); False where torch emulates it."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def device_has_native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


@dataclass(frozen=True)
class Precision:
    """What params asked for (`setting`), what runs (`resolved`) and why."""

    setting: str
    resolved: str  # fp32 | bf16
    device: str
    native_bf16: bool

    @property
    def bf16(self) -> bool:
        return self.resolved == "bf16"

    def describe(self) -> str:
        hardware = (f"CPU {cpu_capability()}" if self.device == "cpu" else self.device)
        native = "native bf16" if self.native_bf16 else "no native bf16"
        return f"{self.resolved} (base.precision {self.setting}; {hardware}: {native})"


def resolve_precision(setting: str, device: torch.device | str, *, where: str = "params.yaml") -> Precision:
    """`auto` -> bf16 on CUDA or a CPU with native bf16, else fp32; `fp32` / `bf16` are taken as asked."""
    if setting not in SETTINGS:
        raise InputError(where, f"base.precision must be one of {', '.join(SETTINGS)}, not {setting!r}")
    device = torch.device(device)
    native = device_has_native_bf16(device)
    resolved = ("bf16" if native else "fp32") if setting == "auto" else setting
    return Precision(setting, resolved, device.type, native)


def announce_precision(precision: Precision, stage: str, log=print) -> None:
    """Log the resolved precision once per stage; bf16 forced onto emulating hardware warns on stderr."""
    log(f"{stage}: precision {precision.describe()}")
    if precision.bf16 and not precision.native_bf16:
        print(f"warning: {stage}: base.precision bf16 on a {precision.device} without native bf16 "
              f"({cpu_capability() if precision.device == 'cpu' else precision.device}) is emulated and can be "
              "tens of times slower than fp32; use auto", file=sys.stderr, flush=True)


__all__ = ["Precision", "SETTINGS", "announce_precision", "cpu_capability", "cpu_has_native_bf16",
           "device_has_native_bf16", "resolve_precision"]


def pick_device(name: str) -> torch.device:
    """`auto` -> cuda when available else cpu. On cuda, deterministic algorithms are switched on.

    `warn_only`: some kernels training needs (grid_sample's backward on CUDA) have no deterministic
    implementation; they warn instead of aborting, every other op stays deterministic.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise InputError("params.yaml", f"base.device must be auto, cpu or cuda, not '{name}'")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError("params.yaml", "base.device is 'cuda' but torch sees no CUDA device")
    # cuBLAS reads this when it initialises: it must be set before the first matmul on the GPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    # under torchrun each rank has its own GPU (pipeline.training.distributed)
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
