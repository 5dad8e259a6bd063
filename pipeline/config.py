"""params.yaml -> one dataclass per stage section.

Stage = params section = module = CLI command. Each stage reads `base` plus its own section;
unknown keys are an error so a typo in params.yaml never silently falls back to a default.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import InputError

MEAD_EMOTIONS = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")


@dataclass(frozen=True)
class BaseParams:
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda
    fps: float = 25.0
    sample_rate: int = 16000
    workers: int = 2  # local Dask workers (processes, one thread each)
    scheduler_address: str | None = None  # a running Dask scheduler; else DASK_SCHEDULER_ADDRESS; else local


@dataclass(frozen=True)
class CorpusParams:
    source: str = "builtin"  # builtin | mead
    mead_root: str | None = None
    size: int = 128
    train_actors: int = 8
    test_actors: int = 4
    train_sentences: int = 3
    test_sentences: int = 2
    emotions: tuple[str, ...] = MEAD_EMOTIONS
    levels: tuple[int, ...] = (1, 3)
    counterfactuals: int = 1  # other-sentence renders per training clip
    blink_rate: float = 0.3  # blinks per second
    chunk_frames: int = 16
    shard_frames: int = 512
    mead_actors: tuple[str, ...] = ()  # empty = every actor found
    mead_test_actors: tuple[str, ...] = ()
    mead_max_clips_per_emotion: int = 0  # 0 = all


@dataclass(frozen=True)
class AudioFeaturesParams:
    mel_step: int = 16  # mel frames per video frame window (Wav2Lip: 0.2 s)
    # STFT edge padding: reflect = librosa 0.7, what the released Wav2Lip/SyncNet were trained with;
    # constant = what the official code computes on librosa >= 0.10 (the golden arrays). Edge columns only.
    mel_pad_mode: str = "reflect"
    chunk_frames: int = 256
    shard_frames: int = 8192


@dataclass(frozen=True)
class TrainFommParams:
    pretrained: str | None = None  # official FOMM checkpoint (vox-cpk.pth.tar): import it instead of training
    vgg19: str | None = None  # torchvision VGG19 weights file: perceptual loss; unset = multi-scale L1
    preset: str = "slim"  # slim | vox256 (FommConfig preset), then `model` overrides
    image_size: int = 128
    num_kp: int = 10
    model: dict = dataclasses.field(default_factory=dict)  # FommConfig.to_dict() overrides
    batch_size: int = 8
    steps: int = 20000  # upper bound on total steps; on CPU max_minutes stops first
    max_minutes: float = 12.0  # wall-clock budget of one run (0 = none)
    lr: float = 2.0e-4
    reconstruction_scales: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    reconstruction_weight: float = 10.0
    equivariance_value_weight: float = 10.0
    equivariance_jacobian_weight: float = 10.0
    sigma_affine: float = 0.05
    sigma_tps: float = 0.005
    points_tps: int = 5
    augment_flip: bool = True  # mirror both frames of a pair (FOMM's augmentation)
    augment_jitter: float = 0.1  # brightness/contrast/saturation/hue jitter of a pair (0 = off)
    gan_weight: float = 0.0  # 0 = no discriminator
    feature_matching_weight: float = 10.0
    bf16: bool = False
    resume: bool = False  # continue from the existing output checkpoint
    checkpoint_every: int = 100
    log_every: int = 10
    threads: int = 0  # torch intra-op threads; 0 = torch's default (all cores). 1 on a busy, shared machine


@dataclass(frozen=True)
class KeypointsParams:
    batch_size: int = 64
    task_frames: int = 2048  # frames per Dask task (the model is loaded once per task)
    chunk_frames: int = 256
    shard_frames: int = 16384
    extra_frames: tuple[str, ...] = ()  # more frame stores (e.g. kept pseudo clips), appended after the corpus
    report_clips: int = 24  # held-out clips reconstructed for the report (0 = all)
    probe_stride: int = 2  # every n-th frame of the real clips feeds the probes
    # ridge penalties (standardised features) tried; one picked by leave-one-actor-out CV on training actors
    probe_alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    mouth_open_param: str = "jaw_open"  # render_params column the mouth-opening probe predicts


@dataclass(frozen=True)
class TrainSyncnetParams:
    pretrained: str | None = None  # official lipsync_expert.pth: import it instead of training
    width: float = 0.25  # channel multiplier of SyncNet_color (1.0 = the official layout)
    batch_size: int = 32  # windows per step
    windows_per_clip: int = 8  # windows drawn from each clip; every in-clip pairing is an example
    steps: int = 20000  # upper bound; on CPU max_minutes stops first
    max_minutes: float = 4.0  # wall-clock budget of one run (0 = none)
    lr: float = 1.0e-3
    negative_min_shift: int = 1  # off-sync windows take audio at least this many frames away (Wav2Lip: 1)
    bf16: bool = True  # bf16 autocast (about 2x faster on CPUs with AVX-512 bf16)
    eval_windows: int = 2000  # held-out windows for the in-sync / off-sync accuracy
    eval_offsets: int = 2  # known shifts per held-out clip for the offset-recovery test
    max_eval_offset: int = 10  # shifts drawn from [-max, max] frames
    resume: bool = False
    checkpoint_every: int = 200
    log_every: int = 20
    threads: int = 0  # torch threads while training; 0 = leave torch's default
    seed_offset: int = 0  # training seed = base.seed + seed_offset


@dataclass(frozen=True)
class TrainSyncScorerParams(TrainSyncnetParams):
    """A second SyncNet_color, trained from another seed, that scores pseudo clips: Wav2Lip learns to please
    the expert it trains against, so that expert's confidence on its own output is biased (the paper
    filters with SyncNet, a model Wav2Lip never saw)."""

    max_minutes: float = 3.0
    seed_offset: int = 1


@dataclass(frozen=True)
class TrainWav2lipParams:
    pretrained: str | None = None  # official wav2lip.pth / wav2lip_gan.pth: import it instead of training
    width: float = 0.25  # channel multiplier of the generator (1.0 = the official layout)
    batch_size: int = 8  # 5-frame windows per step
    steps: int = 20000
    max_minutes: float = 6.0
    lr: float = 1.0e-3
    sync_weight: float = 0.03  # expert sync loss weight (Wav2Lip: 0.03 once the expert loss is low)
    sync_warmup_steps: int = 300  # steps of pure L1 before the sync loss joins
    l1_region: str = "full"  # full (official) | lower: L1 on the lower half only, the part pasted back
    bf16: bool = True  # bf16 autocast (about 2x faster on CPUs with AVX-512 bf16)
    eval_clips: int = 60  # held-out clips for L1/PSNR/sync (0 = all)
    resume: bool = False
    checkpoint_every: int = 100
    log_every: int = 10
    threads: int = 0  # torch threads while training; 0 = leave torch's default


@dataclass(frozen=True)
class PseudoPairsParams:
    sentences_per_clip: int = 2  # re-dubs per training clip, counterfactual sentences first (0 = all others)
    frame_extension: str = "pingpong"  # source frames beyond its length: pingpong | loop (Wav2Lip inference)
    paste: str = "lower"  # lower: generated lower half blended into the frame | full: whole face (official)
    batch_size: int = 32
    landmark_minutes: float = 1.5  # budget of the mouth-landmark regressor that scores pseudo clips
    landmark_steps: int = 4000
    chunk_frames: int = 16
    shard_frames: int = 512


@dataclass(frozen=True)
class SyncFilterParams:
    weights: str | None = None  # scorer: null = data/models/sync_scorer.pt; or official syncnet_v2.model
    threshold: float = 0.2  # keep clips whose confidence (LSE-C, scorer units) exceeds this
    max_offset: int = 1  # ... and whose AV offset is within +-max_offset frames
    hist_bins: int = 30


SECTIONS: dict[str, type] = {
    "base": BaseParams,
    "corpus": CorpusParams,
    "audio_features": AudioFeaturesParams,
    "train_fomm": TrainFommParams,
    "keypoints": KeypointsParams,
    "train_syncnet": TrainSyncnetParams,
    "train_sync_scorer": TrainSyncScorerParams,
    "train_wav2lip": TrainWav2lipParams,
    "pseudo_pairs": PseudoPairsParams,
    "sync_filter": SyncFilterParams,
}


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "params file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(path, "expected a mapping of sections at the top level")
    return data


def build_section(cls: type, values: dict | None, *, where: str = "params.yaml", name: str = "") -> Any:
    """Instantiate a params dataclass, converting lists to tuples and refusing unknown keys."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(where, f"section '{name}': unknown key(s) {unknown}; known: {sorted(names)}")
    for key, value in values.items():
        if isinstance(value, list) and "tuple" in str(hints[key]):
            values[key] = tuple(value)
    return cls(**values)


def load_section(name: str, path: str | Path = "params.yaml") -> Any:
    data = read_yaml(path)
    return build_section(SECTIONS[name], data.get(name), where=str(path), name=name)


def deep_merge(base: dict, overlay: dict) -> dict:
    """Overlay a profile onto params: nested mappings merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def as_dict(params: Any) -> dict:
    """A params dataclass as plain JSON-able data (for store attributes and checkpoints)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(params).items()}


def with_field(params: Any, **changes: Any) -> Any:
    return dataclasses.replace(params, **changes)


__all__ = [
    "AudioFeaturesParams", "BaseParams", "CorpusParams", "MEAD_EMOTIONS", "SECTIONS",
    "as_dict", "build_section", "deep_merge", "load_section", "read_yaml", "with_field",
    "TrainFommParams", "KeypointsParams",
    "TrainSyncnetParams", "TrainSyncScorerParams", "TrainWav2lipParams", "PseudoPairsParams", "SyncFilterParams",
]
