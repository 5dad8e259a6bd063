"""Checkpoint load/save: plain-dict files, `weights_only=True`, strict loading with one-line errors."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.core.errors import CheckpointError


def load_file(path: str | Path) -> Any:
    """torch.load with weights_only=True; any failure becomes a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(path, f"refused: needs pickled code, not a weights-only file ({first})") from None
    except Exception as exc:  # corrupt zip, truncated file, not a torch file
        raise CheckpointError(path, f"not a readable torch checkpoint ({type(exc).__name__})") from None


def extract_state_dict(obj: Any, path: str | Path, keys: tuple[str, ...] = ("state_dict", "model")) -> dict:
    """Find the tensor dict inside a container; drop a DataParallel `module.` prefix."""
    if isinstance(obj, Mapping):
        for key in keys:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(path, f"no state dict found (looked for a tensor dict or keys {list(keys)})")
    return strip_prefix(dict(obj), "module.")


def strip_prefix(state_dict: dict, prefix: str) -> dict:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    optional_suffixes: tuple[str, ...] = ("num_batches_tracked",),
) -> None:
    """Load every parameter and buffer or fail naming the first missing, unexpected or mis-shaped key.

    Keys ending in `optional_suffixes` may be absent from the file (older torch wrote no
    `num_batches_tracked`); buffers the module registers as non-persistent are never expected.
    """
    expected = module.state_dict()
    for key, target in expected.items():
        if key not in state_dict:
            if key.endswith(optional_suffixes):
                continue
            raise CheckpointError(path, f"missing key '{key}' (expected shape {tuple(target.shape)})")
        if tuple(state_dict[key].shape) != tuple(target.shape):
            raise CheckpointError(
                path,
                f"key '{key}' has shape {tuple(state_dict[key].shape)}, model expects {tuple(target.shape)}",
            )
    for key in state_dict:
        if key not in expected:
            raise CheckpointError(path, f"unexpected key '{key}' (not in {type(module).__name__})")
    filled = {k: v for k, v in state_dict.items()}
    for key, target in expected.items():
        filled.setdefault(key, target)
    module.load_state_dict(filled, strict=True)


def save_checkpoint(path: str | Path, *, model: Mapping[str, Any], config: Mapping[str, Any], step: int,
                    metrics: Mapping[str, Any] | None = None, **extra: Any) -> None:
    """Plain-dict checkpoint {model, config, step, metrics}, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": dict(model), "config": dict(config), "step": int(step),
                "metrics": dict(metrics or {}), **extra}, tmp)
    os.replace(tmp, path)


def load_training_state(path: str | Path) -> dict:
    """A checkpoint written by `save_training_state` (weights_only); refuses anything else in one line."""
    ckpt = load_file(path)
    if not isinstance(ckpt, Mapping) or not {"model", "config", "step"} <= set(ckpt):
        raise CheckpointError(path, "not a pipeline checkpoint (expected keys model, config, step)")
    return dict(ckpt)
