"""`syncnet.pt` and `wav2lip.pt`: the pipeline's lip-sync checkpoints, and loading any SyncNet file.

Both are plain dicts written by `pipeline.training.loop.save_training_state`:
  syncnet.pt  {model: {syncnet_color: state}, config: {arch: syncnet_color, model: SyncNetColorConfig, fps,
               mel_pad_mode}, step, metrics[, train_state]}
  wav2lip.pt  {model: {wav2lip: state}, config: {arch: wav2lip, model: Wav2LipConfig, fps, mel_pad_mode}, ...}
`config` rebuilds the module without params.yaml. `load_syncnet_any` also takes the official files
(syncnet_python's `syncnet_v2.model`, Wav2Lip's `lipsync_expert.pth`), told apart by their key names;
anything else (another model's checkpoint) is refused in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.core.checkpoints import (
    extract_state_dict,
    load_file,
    load_strict,
    load_training_state,
)
from pipeline.core.errors import CheckpointError, InputError
from pipeline.models.syncnet_color import (
    SyncNetColor,
    SyncNetColorConfig,
    load_official_syncnet_color,
)
from pipeline.models.syncnet_v2 import load_official_syncnet_v2
from pipeline.models.wav2lip import Wav2Lip, Wav2LipConfig

ARCHS: dict[str, tuple[type, type]] = {
    "syncnet_color": (SyncNetColor, SyncNetColorConfig),
    "wav2lip": (Wav2Lip, Wav2LipConfig),
}


@dataclass
class LoadedModel:
    """An eval-mode module, its arch name and the checkpoint's config, step and metrics."""

    arch: str
    module: nn.Module
    config: dict = field(default_factory=dict)
    step: int = 0
    metrics: dict = field(default_factory=dict)


def lipsync_config(arch: str, model_config: Any, fps: float, mel_pad_mode: str) -> dict:
    return {"arch": arch, "model": model_config.to_dict(), "fps": float(fps), "mel_pad_mode": mel_pad_mode}


def build_module(arch: str, config: Mapping[str, Any], path: str | Path) -> nn.Module:
    module_cls, config_cls = ARCHS[arch]
    try:
        return module_cls(config_cls.from_dict(dict(config["model"])))
    except (InputError, KeyError, TypeError) as exc:
        raise CheckpointError(path, f"bad {arch} config in checkpoint ({exc})") from None


def load_pipeline_model(path: str | Path, arch: str, ckpt: Mapping[str, Any] | None = None) -> LoadedModel:
    """A syncnet.pt / wav2lip.pt written by this pipeline (`ckpt`: its already loaded content); any other
    checkpoint is refused in one line."""
    ckpt = load_training_state(path) if ckpt is None else ckpt
    found = ckpt.get("config", {}).get("arch") if isinstance(ckpt.get("config"), Mapping) else None
    model = ckpt["model"] if isinstance(ckpt["model"], Mapping) else {}
    if found != arch or arch not in model:
        what = found or ", ".join(sorted(model)) or "unknown"
        raise CheckpointError(path, f"checkpoint of the wrong model ({what}); expected a {arch} checkpoint")
    module = build_module(arch, ckpt["config"], path)
    try:
        load_strict(module, model[arch], path)
    except CheckpointError as exc:
        raise CheckpointError(path, f"[{arch}] {exc.problem}") from None
    return LoadedModel(arch, module.eval(), dict(ckpt["config"]), int(ckpt["step"]), dict(ckpt.get("metrics") or {}))


def is_pipeline_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and {"model", "config", "step"} <= set(obj)


def load_syncnet_any(path: str | Path) -> LoadedModel:
    """A SyncNet for scoring: our syncnet.pt, official syncnet_v2.model, or official lipsync_expert.pth."""
    obj = load_file(path)
    if is_pipeline_checkpoint(obj):
        return load_pipeline_model(path, "syncnet_color", obj)
    state = extract_state_dict(obj, path)
    keys = set(state)
    if any(k.startswith(("netcnnaud.", "netcnnlip.")) for k in keys):
        return LoadedModel("syncnet_v2", load_official_syncnet_v2(path), {"source": "official syncnet_v2"})
    if any(k.startswith("face_encoder.") for k in keys) and not any(k.startswith("face_decoder") for k in keys):
        return LoadedModel("syncnet_color", load_official_syncnet_color(path), {"source": "official lipsync_expert"})
    kind = "a Wav2Lip generator" if any(k.startswith("face_decoder") for k in keys) else "not a SyncNet"
    raise CheckpointError(path, f"checkpoint of the wrong model ({kind}); expected syncnet.pt, syncnet_v2.model "
                                f"or lipsync_expert.pth")


def load_expert(path: str | Path) -> LoadedModel:
    """The frozen SyncNet_color expert Wav2Lip trains against (syncnet.pt or official lipsync_expert.pth)."""
    loaded = load_syncnet_any(path)
    if loaded.arch != "syncnet_color":
        raise CheckpointError(path, f"Wav2Lip trains against a SyncNet_color expert, this is {loaded.arch}")
    return loaded


def load_wav2lip_any(path: str | Path) -> LoadedModel:
    """Our wav2lip.pt, or an official wav2lip(_gan).pth."""
    from pipeline.models.wav2lip import load_official_wav2lip

    obj = load_file(path)
    if is_pipeline_checkpoint(obj):
        return load_pipeline_model(path, "wav2lip", obj)
    return LoadedModel("wav2lip", load_official_wav2lip(path), {"source": "official wav2lip"})


def frozen(module: nn.Module) -> nn.Module:
    """Eval mode (BN running stats) and no gradients, for the expert inside Wav2Lip's loss."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
