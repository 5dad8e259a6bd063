"""The assembled EMMN audio-to-motion network (paper §3.3-3.5) and its two ablations, one code path.

    reference image -> E_i -> f_i                      (identity encoder, small CNN)
    mfcc -> frozen audio encoders -> e_c per frame, e_e per clip
    (e_c, f_i) -> D_m -> f^_m per frame                (Mouth Decoder, 1-D convs over time: Eq. 6)
    f^_m ⊕ e_e -> Omega_em over M_em -> f^_e;em        (Motion Memory-Net: Eq. 10, 12)
    frozen D_em(f^_e;em, f^_m, p_neu, j_neu) -> (p^, j^)   (Motion Integration from motion.pt: Eq. 13)

`EmmnConfig.variant` picks what is built (the paper's ablations, §4 "Ablation Study"):
* `emmn`: the above. With `temporal_expression` (our addition, not in the paper) a second temporal decoder D_t
  reads the same (e_c, f_i) plus e_e and adds a per-frame residual to the memory's read: f^_e = f^_e;em + D_t.
  Why: the paper says the expression features carry head pose, but the emo-mouth query (f^_m, e_e) says nothing
  about where a speaker nods, so the read holds one pose per clip and the head never moves; nods follow the
  stressed syllables, which the audio's content carries with a few frames of context. D_t is trained on
  f_e - f^_e;em (the read detached: the memory keeps Eq. 7-12 to itself), so it learns what the memory misses.
* `baseline` (ablation 1, no memory, no motion decomposition): D_m reads (e_c, f_i, e_e) and a keypoint head
  turns its per-frame output straight into (p, j) (as offsets from the neutral keypoints p_neu, j_neu, which
  every variant gets, as D_em does in EMMN). Trained with L_p,j only.
* `mmn` (ablation 2, memory without motion decomposition, as in EAMM): D_m reads (e_c, f_i) and the keypoint
  head predicts every keypoint from it; M_exp stores, instead of f_e, the displacement from neutral
  (p - p_neu, j - j_neu) of 3 upper-face keypoints (`upper_keypoints`, chosen from the training data by the
  train_memory stage), retrieved with the query (D_m output ⊕ e_e) and written over those 3 keypoints.
  Trained with L_exp-mem, L_align, L_p,j (no L_a2m: without motion decomposition there is no f_m target).

Read temperature (`read_temperature`, inference only): L_align (Eq. 11) trains Omega_em towards per-frame
targets Omega_exp that vary within an emotion (blinks, speech), and the KL's minimiser is a blend of them: the
trained address spreads over many slots (perplexity ~33 of 64) and the read-out is pulled halfway to the mean
expression. `predict` therefore divides the same cosines by a smaller tau, which keeps the slot ranking and
sharpens the weights; training and every loss keep `temperature`.

Emotion override (for `emmn generate --emotion NAME --intensity X`): by default e_e comes from the audio, as in
the paper. `emotion_embedding(name, intensity)` instead returns
    e_e = e_neutral + X (e_NAME - e_neutral),
where e_NAME is the mean e_e of the training clips of that emotion at its strongest level and e_neutral the mean
of the neutral clips (both computed by train_memory and stored in the checkpoint, `EmotionTable`). X = 0 is
neutral, 1 the strongest level seen in training, values in (1, 2] extrapolate. In emmn and mmn only the emo-mouth
query (Eq. 10) changes: the mouth still follows the audio's content e_c (the baseline feeds e_e to D_m instead).

Checkpoint `emmn.pt` (plain dict): {model: {identity_encoder, mouth_decoder, memory?, keypoint_head?,
emotion_table}, config: EmmnConfig.to_dict(), step, metrics, frozen: {audio: <audio.pt dict>, motion:
<motion.pt dict> (emmn only)}}: the frozen checkpoints are embedded, so `load_emmn` needs only emmn.pt.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.checkpoints import load_strict
from pipeline.core.errors import CheckpointError, InputError
from pipeline.models.memory import MotionMemory, emo_mouth_query

VARIANTS = ("emmn", "baseline", "mmn")
TRAINABLE = ("identity_encoder", "content_encoder", "mouth_decoder", "expression_decoder", "memory", "keypoint_head",
             "emotion_table")


@dataclass(frozen=True)
class EmmnConfig:
    variant: str = "emmn"
    num_kp: int = 10
    content_dim: int = 64  # e_c size (from the audio encoders)
    emotion_dim: int = 64  # e_e size
    mouth_dim: int = 32  # f^_m size (emmn: MotionNet's mouth_dim); the D_m output size in the ablations
    expression_dim: int = 32  # M_exp slot size: f_e size (emmn), 6 x len(upper_keypoints) (mmn), 0 (baseline)
    identity_dim: int = 64
    identity_size: int = 64  # E_i reads the reference image resized to this
    identity_channels: tuple[int, ...] = (16, 32, 64, 64)  # one stride-2 conv per entry
    hidden: int = 128
    decoder_blocks: int = 3  # residual temporal conv blocks of D_m
    kernel: int = 5  # temporal kernel of D_m (odd)
    slots: int = 64  # S
    temperature: float = 0.1  # tau of the cosine-softmax addressing
    read_temperature: float | None = None  # tau of Eq. 10 at inference (`predict`); None = temperature
    balance_query: bool = True  # unit-normalise f^_m and e_e before concatenating (Eq. 10)
    mouth_from_a2m_only: bool = True  # emmn: the memory and D_em read f^_m detached, so only L_a2m trains D_m
    temporal_expression: bool = False  # emmn: D_t adds a per-frame residual to the memory's read (head motion)
    tune_content: bool = False  # a trainable copy of the audio's content encoder E_c (Audio2Mouth pre-training)
    window: int = 32  # frames per inference window (= training window: e_e is pooled over this many frames)
    upper_keypoints: tuple[int, ...] = ()  # mmn: keypoints whose displacement M_exp stores
    emotions: tuple[str, ...] = ()  # rows of the emotion table
    levels: tuple[int, ...] = ()  # columns of the emotion table

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise InputError(None, f"variant must be one of {list(VARIANTS)}, not '{self.variant}'")
        if self.kernel % 2 == 0:
            raise InputError(None, f"kernel must be odd, not {self.kernel}")
        if self.variant == "mmn" and self.expression_dim != 6 * len(self.upper_keypoints):
            raise InputError(None, "mmn: expression_dim must be 6 x len(upper_keypoints)")
        if self.temporal_expression and self.variant != "emmn":
            raise InputError(None, "temporal_expression needs variant emmn (it adds to f_e)")
        if self.read_temperature is not None and self.read_temperature <= 0:
            raise InputError(None, f"read_temperature must be > 0 (or null), not {self.read_temperature}")

    @property
    def context(self) -> int:
        """Frames of audio context each side that one D_m output depends on."""
        return self.decoder_blocks * (self.kernel // 2)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmmnConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(None, f"unknown EMMN config key(s) {unknown}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})


# ------------------------------------------------------------------------------------------- modules


class IdentityEncoder(nn.Module):
    """E_i: reference image (B, 3, H, W) in [0, 1] -> f_i (B, identity_dim)."""

    def __init__(self, config: EmmnConfig):
        super().__init__()
        self.size = config.identity_size
        layers, channels = [], 3
        for width in config.identity_channels:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.GroupNorm(1, width), nn.LeakyReLU(0.2)]
            channels = width
        self.convs = nn.Sequential(*layers)
        self.out = nn.Linear(channels, config.identity_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-2:] != (self.size, self.size):
            image = F.interpolate(image, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                  antialias=True)
        return self.out(self.convs(image * 2 - 1).mean(dim=(2, 3)))


class MouthDecoder(nn.Module):
    """D_m: per-frame (e_c, f_i[, e_e]) -> per-frame f^_m, with `context` frames of temporal context each side.
    Also D_t (`temporal_expression`): the same layout reading e_e too, out_dim = expression_dim."""

    def __init__(self, config: EmmnConfig, out_dim: int | None = None, with_emotion: bool | None = None):
        super().__init__()
        in_dim = config.content_dim + config.identity_dim
        if config.variant == "baseline" if with_emotion is None else with_emotion:
            in_dim += config.emotion_dim
        self.inp = nn.Linear(in_dim, config.hidden)
        self.blocks = nn.ModuleList(
            nn.Conv1d(config.hidden, config.hidden, config.kernel, padding=config.kernel // 2)
            for _ in range(config.decoder_blocks))
        self.out = nn.Linear(config.hidden, config.mouth_dim if out_dim is None else out_dim)

    def forward(self, content: torch.Tensor, identity: torch.Tensor, emotion: torch.Tensor | None = None
                ) -> torch.Tensor:
        """content (B, T, C), identity (B, I), emotion (B, E) or None -> (B, T, mouth_dim)."""
        per_clip = [identity] if emotion is None else [identity, emotion]
        per_clip = torch.cat(per_clip, dim=-1)[:, None].expand(-1, content.shape[1], -1)
        h = F.leaky_relu(self.inp(torch.cat([content, per_clip], dim=-1)), 0.2).transpose(1, 2)  # (B, H, T)
        for conv in self.blocks:
            h = h + F.leaky_relu(conv(h), 0.2)
        return self.out(h.transpose(1, 2))


class KeypointHead(nn.Module):
    """Ablations: per-frame D_m output + neutral keypoints -> (p, j) as offsets from (p_neu, j_neu)."""

    def __init__(self, config: EmmnConfig):
        super().__init__()
        n = config.num_kp
        self.num_kp = n
        self.mlp = nn.Sequential(nn.Linear(config.mouth_dim + 6 * n, config.hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(config.hidden, 6 * n))

    def forward(self, h: torch.Tensor, value_neu: torch.Tensor, jacobian_neu: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, T, M), value_neu (B, N, 2), jacobian_neu (B, N, 2, 2) -> (B, T, N, 2), (B, T, N, 2, 2)."""
        b, t, n = h.shape[0], h.shape[1], self.num_kp
        neutral = neutral_vector(value_neu, jacobian_neu)[:, None].expand(-1, t, -1)
        offset = self.mlp(torch.cat([h, neutral], dim=-1)).view(b, t, n, 6)
        return value_neu[:, None] + offset[..., :2], jacobian_neu[:, None] + offset[..., 2:].reshape(b, t, n, 2, 2)


class EmotionTable(nn.Module):
    """Mean e_e of the training clips per (emotion, level), for the emotion override (see module docstring)."""

    def __init__(self, config: EmmnConfig):
        super().__init__()
        self.emotions, self.levels = tuple(config.emotions), tuple(config.levels)
        self.register_buffer("mean", torch.zeros(len(self.emotions), len(self.levels), config.emotion_dim))
        self.register_buffer("count", torch.zeros(len(self.emotions), len(self.levels)))

    @torch.no_grad()
    def fill(self, embeddings: torch.Tensor, emotions: list[str], levels: list[int]) -> None:
        """Set the table from one e_e (rows of `embeddings`) per training clip with its emotion and level."""
        self.mean.zero_()
        self.count.zero_()
        for e, name in enumerate(self.emotions):
            for k, level in enumerate(self.levels):
                rows = [i for i, (a, b) in enumerate(zip(emotions, levels)) if a == name and b == level]
                if rows:
                    self.mean[e, k] = embeddings[rows].mean(0)
                    self.count[e, k] = len(rows)

    def lookup(self, name: str, intensity: float) -> torch.Tensor:
        """(emotion_dim,) e_neutral + intensity (e_name - e_neutral); one-line InputError on a bad request."""
        if name not in self.emotions or self.count[self.emotions.index(name)].sum() == 0:
            known = [e for i, e in enumerate(self.emotions) if self.count[i].sum() > 0]
            raise InputError(None, f"unknown emotion '{name}'; known: {', '.join(known) or 'none'}")
        if not 0.0 <= intensity <= 2.0:
            raise InputError(None, f"intensity must be in [0, 2] (1 = strongest training level), not {intensity}")
        target = self._strongest(self.emotions.index(name))
        if "neutral" in self.emotions and self.count[self.emotions.index("neutral")].sum() > 0:
            neutral = self._strongest(self.emotions.index("neutral"))
        else:  # no neutral clips: the mean over every clip stands in for neutral
            weights = self.count / self.count.sum()
            neutral = (self.mean * weights[..., None]).sum(dim=(0, 1))
        return neutral + intensity * (target - neutral)

    def _strongest(self, e: int) -> torch.Tensor:
        k = int(torch.nonzero(self.count[e] > 0).max())
        return self.mean[e, k]


def neutral_vector(value_neu: torch.Tensor, jacobian_neu: torch.Tensor) -> torch.Tensor:
    """(B, N, 2), (B, N, 2, 2) -> (B, 6N): each keypoint's (x, y, j00, j01, j10, j11)."""
    return torch.cat([value_neu, jacobian_neu.flatten(-2)], dim=-1).flatten(-2)


def keypoint_displacement(value: torch.Tensor, jacobian: torch.Tensor, value_neu: torch.Tensor,
                          jacobian_neu: torch.Tensor, keypoints: tuple[int, ...]) -> torch.Tensor:
    """mmn's memory value: (p - p_neu, j - j_neu) of `keypoints`, flattened. value (..., N, 2), neutral
    (..., N, 2) broadcastable -> (..., 6 len(keypoints))."""
    idx = list(keypoints)
    dv = value[..., idx, :] - value_neu[..., idx, :]
    dj = (jacobian[..., idx, :, :] - jacobian_neu[..., idx, :, :]).flatten(-2)
    return torch.cat([dv, dj], dim=-1).flatten(-2)


@dataclass
class EmmnOutput:
    """Per-frame output of `EmmnNet.forward` (B clips, T frames); `predict` returns the same as a dict."""

    value: torch.Tensor  # (B, T, N, 2) p^
    jacobian: torch.Tensor  # (B, T, N, 2, 2) j^
    mouth: torch.Tensor  # (B, T, mouth_dim) f^_m (the D_m output)
    emotion: torch.Tensor  # (B, emotion_dim) e_e used in the query
    expression: torch.Tensor | None  # (B, T, expression_dim) f^_e;em (Eq. 12) [+ D_t]; None for the baseline
    log_slot_weights: torch.Tensor | None  # (B, T, S) log Omega_em (Eq. 10); None for the baseline
    read: torch.Tensor | None = None  # (B, T, expression_dim) the memory's read alone (= expression without D_t)

    @property
    def slot_weights(self) -> torch.Tensor | None:
        return None if self.log_slot_weights is None else self.log_slot_weights.exp()


# ------------------------------------------------------------------------------------------- network


class EmmnNet(nn.Module):
    """Trainable parts (E_i, D_m, memories or keypoint head, emotion table) around frozen audio encoders and,
    for `emmn`, the frozen motion decoder D_em. The frozen modules stay in eval mode and get no gradients."""

    def __init__(self, config: EmmnConfig, audio: nn.Module, motion: nn.Module | None = None):
        super().__init__()
        if config.variant == "emmn" and motion is None:
            raise ValueError("variant emmn needs the motion network (D_em)")
        self.config = config
        self.identity_encoder = IdentityEncoder(config)
        self.mouth_decoder = MouthDecoder(config)
        # E_c fine-tuned with D_m (the paper pre-trains Audio2Mouth on LRW): a copy, so E_e and audio.pt stay as
        # train_audio made them; emmn.pt stores the copy with the other trainable parts
        self.content_encoder = copy.deepcopy(audio.con_encoder).requires_grad_(True) if config.tune_content else None
        self.expression_decoder = (MouthDecoder(config, config.expression_dim, with_emotion=True)
                                   if config.temporal_expression else None)
        self.memory = None if config.variant == "baseline" else MotionMemory(
            config.slots, config.expression_dim, config.mouth_dim + config.emotion_dim, config.temperature)
        self.keypoint_head = None if config.variant == "emmn" else KeypointHead(config)
        self.emotion_table = EmotionTable(config)
        self.audio = _freeze(audio)
        self.motion = None if config.variant != "emmn" else _freeze(motion)

    def train(self, mode: bool = True) -> EmmnNet:
        super().train(mode)
        self.audio.eval()
        if self.content_encoder is not None:  # fine-tuned weights, but the BatchNorm statistics train_audio
            self.content_encoder.eval()       # recalibrated: batch statistics would make training differ from use
        if self.motion is not None:
            self.motion.eval()
        return self

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in TRAINABLE if getattr(self, name) is not None}

    # ------------------------------------------------------------------------------- audio (frozen)

    @property
    def needs_mel(self) -> bool:
        """True when the frozen emotion encoder reads the Wav2Lip mel windows (AudioConfig.emotion_input mel)."""
        return bool(getattr(self.audio, "needs_mel", False))

    @property
    def needs_prosody(self) -> bool:
        """True when the frozen emotion encoder also hears voice-relative prosody (AudioConfig.prosody_channels)."""
        return bool(getattr(self.audio, "needs_prosody", False))

    @torch.no_grad()
    def encode_audio(self, mfcc: torch.Tensor, window: int | None = None, mel: torch.Tensor | None = None,
                     prosody: torch.Tensor | None = None, voice: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """mfcc (B, T, 28, 12) [+ mel (B, T, 80, 16) when `needs_mel`; + prosody (B, T, 4, 3) and optionally the
        voice baseline (B, 2) when `needs_prosody`] -> e_c (B, T, C) and e_e (B, E), window by window (memory
        bounded for any T); see `encode_content` and `encode_emotion`."""
        return self.encode_content(mfcc, window), self.encode_emotion(mfcc, window, mel, prosody, voice)

    @torch.no_grad()
    def encode_content(self, mfcc: torch.Tensor, window: int | None = None) -> torch.Tensor:
        """e_c per frame (B, T, C), computed on windows of `window` frames with D_m's context added on both sides
        (an encoder with a little temporal context then sees the same neighbours as on the whole clip)."""
        window = window or self.config.window
        total, margin = mfcc.shape[1], self.config.context
        contents = []
        for start in range(0, total, window):
            stop = min(start + window, total)
            lo, hi = max(start - margin, 0), min(stop + margin, total)
            contents.append(self.content_features(mfcc[:, lo:hi])[:, start - lo:stop - lo])
        return torch.cat(contents, dim=1)

    def content_features(self, mfcc: torch.Tensor) -> torch.Tensor:
        """e_c (B, T, C) of mfcc (B, T, 28, 12) by the fine-tuned copy of E_c when there is one (differentiable
        then: training calls it), else by the frozen audio encoder."""
        return self.audio.encode_content(mfcc, self.content_encoder)

    @torch.no_grad()
    def encode_emotion(self, mfcc: torch.Tensor, window: int | None = None, mel: torch.Tensor | None = None,
                       prosody: torch.Tensor | None = None, voice: torch.Tensor | None = None) -> torch.Tensor:
        """e_e (B, E): the frozen emotion encoder pooled over windows of about `window` frames (the clip is cut into
        equal windows so none is a sliver), averaged over them weighted by length. `voice` None: the encoder's
        default baseline (the training speakers' average)."""
        if self.needs_mel and mel is None:
            raise InputError(None, "this model's emotion encoder reads mel windows: pass mel (B, T, 80, 16)")
        if self.needs_prosody and prosody is None:
            raise InputError(None, "this model's emotion encoder hears prosody: pass prosody (B, T, 4, 3)")
        window = window or self.config.window
        total = mfcc.shape[1]
        pieces = max(1, round(total / window))
        bounds = [round(i * total / pieces) for i in range(pieces + 1)]
        emotion = 0
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            extra = (prosody[:, lo:hi], voice) if self.needs_prosody else ()
            part = (self.audio.encode_emotion(mfcc[:, lo:hi], mel[:, lo:hi], *extra) if self.needs_mel
                    else self.audio.encode_emotion(mfcc[:, lo:hi], None, *extra))
            emotion = emotion + part * ((hi - lo) / total)
        return emotion

    def emotion_embedding(self, name: str, intensity: float = 1.0) -> torch.Tensor:
        """The override e_e (emotion_dim,) for `name` at `intensity` (see the module docstring)."""
        return self.emotion_table.lookup(name, float(intensity))

    # ------------------------------------------------------------------------------------- forward

    def forward(self, image: torch.Tensor, content: torch.Tensor, emotion: torch.Tensor, value_neu: torch.Tensor,
                jacobian_neu: torch.Tensor) -> EmmnOutput:
        """One window: image (B, 3, H, W) in [0, 1], e_c (B, T, C), e_e (B, E), p_neu (B, N, 2), j_neu
        (B, N, 2, 2) -> EmmnOutput. Differentiable in the trainable parts (training uses it)."""
        identity = self.identity_encoder(image)
        return self._decode(identity, content, emotion, value_neu, jacobian_neu)

    def _decode(self, identity: torch.Tensor, content: torch.Tensor, emotion: torch.Tensor, value_neu: torch.Tensor,
                jacobian_neu: torch.Tensor, keep: slice = slice(None), read_temperature: float | None = None
                ) -> EmmnOutput:
        variant = self.config.variant
        mouth = self.mouth_decoder(content, identity, emotion if variant == "baseline" else None)[:, keep]
        if variant == "baseline":
            value, jacobian = self.keypoint_head(mouth, value_neu, jacobian_neu)
            return EmmnOutput(value, jacobian, mouth, emotion, None, None)
        # L_align and L_p,j otherwise pull D_m off its target: trained jointly, held-out f^_m was no better than the
        # mean f_m (0.27 vs 0.27); detached, 0.08. EmmnOutput.mouth keeps the graph for L_a2m.
        mouth_read = mouth.detach() if variant == "emmn" and self.config.mouth_from_a2m_only else mouth
        query = emo_mouth_query(mouth_read, emotion[:, None], self.config.balance_query)
        log_weights = self.memory.log_address_emo_mouth(query, read_temperature)  # Eq. 10
        read = self.memory.read(log_weights.exp())  # Eq. 12
        expression = read
        if self.expression_decoder is not None:
            expression = read + self.expression_decoder(content, identity, emotion)[:, keep]
        if variant == "emmn":
            value, jacobian = self.integrate(expression, mouth_read, value_neu, jacobian_neu)
        else:
            value, jacobian = self.keypoint_head(mouth, value_neu, jacobian_neu)
            value, jacobian = self._place_upper(expression, value, jacobian, value_neu, jacobian_neu)
        return EmmnOutput(value, jacobian, mouth, emotion, expression, log_weights, read)

    def integrate(self, expression: torch.Tensor, mouth: torch.Tensor, value_neu: torch.Tensor,
                   jacobian_neu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen D_em(f^_e;em, f^_m, p_neu, j_neu) frame by frame (gradients still flow to its inputs)."""
        b, t, n = mouth.shape[0], mouth.shape[1], value_neu.shape[1]
        value, jacobian = self.motion.decode(
            expression.reshape(b * t, -1), mouth.reshape(b * t, -1),
            value_neu[:, None].expand(-1, t, -1, -1).reshape(b * t, n, 2),
            jacobian_neu[:, None].expand(-1, t, -1, -1, -1).reshape(b * t, n, 2, 2))
        return value.view(b, t, n, 2), jacobian.view(b, t, n, 2, 2)

    def _place_upper(self, displacement: torch.Tensor, value: torch.Tensor, jacobian: torch.Tensor,
                     value_neu: torch.Tensor, jacobian_neu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mmn: the memory's keypoints = neutral + retrieved displacement, written over the head's prediction."""
        idx = list(self.config.upper_keypoints)
        d = displacement.unflatten(-1, (len(idx), 6))
        value, jacobian = value.clone(), jacobian.clone()
        value[:, :, idx] = value_neu[:, None, idx] + d[..., :2]
        jacobian[:, :, idx] = jacobian_neu[:, None, idx] + d[..., 2:].unflatten(-1, (2, 2))
        return value, jacobian

    # ------------------------------------------------------------------------------------ inference

    @property
    def emotions(self) -> list[str]:
        """Emotions the override accepts (those with training clips in the emotion table)."""
        table = self.emotion_table
        return [e for i, e in enumerate(table.emotions) if table.count[i].sum() > 0]

    @torch.no_grad()
    def predict(self, image: torch.Tensor, mfcc: torch.Tensor, value_neu: torch.Tensor, jacobian_neu: torch.Tensor,
                *, emotion: str | None = None, intensity: float = 1.0, window: int | None = None,
                mel: torch.Tensor | None = None, prosody: torch.Tensor | None = None,
                voice: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        """Inference on audio of any length: image (B, 3, H, W) in [0, 1], mfcc (B, T, 28, 12), p_neu (B, N, 2),
        j_neu (B, N, 2, 2) [, mel (B, T, 80, 16): needed only when `needs_mel` and no `emotion` is given; prosody
        (B, T, 4, 3) likewise when `needs_prosody`, with the speaker's voice baseline (B, 2) if known]
        -> {value (B, T, N, 2), jacobian (B, T, N, 2, 2), mouth (B, T, mouth_dim) f^_m,
        emotion (B, emotion_dim) e_e, expression (B, T, expression_dim) f^_e;em, slot_weights (B, T, S) Omega_em}
        (the last two None for the baseline).

        Processed window by window (`window` frames, default config.window), each with D_m's context on both
        sides, so memory stays bounded and the result equals a single pass over the whole clip. e_e comes from
        the audio (pooled over config.window-frame pieces, as in training, whatever `window` is) unless `emotion`
        names an emotion of `self.emotions` (then `intensity` scales it, see the module docstring; an unknown name
        is a one-line InputError). Inputs are moved to the model's device; outputs stay there.
        """
        self.eval()
        device = next(self.identity_encoder.parameters()).device
        image, mfcc = image.to(device), mfcc.to(device)
        value_neu, jacobian_neu = value_neu.to(device), jacobian_neu.to(device)
        window = window or self.config.window
        if emotion is not None:  # a bad name or intensity fails before any work
            e_e = self.emotion_embedding(emotion, intensity).to(device)[None].expand(mfcc.shape[0], -1)
        else:  # pooled at the training time scale (config.window), whatever `window` the caller computes in
            e_e = self.encode_emotion(mfcc, mel=None if mel is None else mel.to(device),
                                      prosody=None if prosody is None else prosody.to(device),
                                      voice=None if voice is None else voice.to(device))
        content = self.encode_content(mfcc, window)
        identity = self.identity_encoder(image)
        total, margin, parts = mfcc.shape[1], self.config.context, []
        for start in range(0, total, window):
            stop = min(start + window, total)
            lo, hi = max(start - margin, 0), min(stop + margin, total)
            parts.append(self._decode(identity, content[:, lo:hi], e_e, value_neu, jacobian_neu,
                                      keep=slice(start - lo, start - lo + stop - start),
                                      read_temperature=self.config.read_temperature))

        def cat(name: str) -> torch.Tensor | None:
            first = getattr(parts[0], name)
            return None if first is None else torch.cat([getattr(p, name) for p in parts], dim=1)

        log_weights = cat("log_slot_weights")
        return {"value": cat("value"), "jacobian": cat("jacobian"), "mouth": cat("mouth"), "emotion": e_e,
                "expression": cat("expression"), "slot_weights": None if log_weights is None else log_weights.exp()}


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


# -------------------------------------------------------------------------------------- checkpoint


def save_emmn(path: str | Path, model: EmmnNet, *, step: int, metrics: Mapping[str, Any],
              frozen: Mapping[str, Mapping[str, Any]]) -> None:
    """emmn.pt: the trainable state, the config, and the frozen checkpoints embedded (see module docstring)."""
    from pipeline.core.checkpoints import save_checkpoint

    state = {name: {k: v.detach().cpu() for k, v in m.state_dict().items()}
             for name, m in model.trainable_modules().items()}
    save_checkpoint(path, model=state, config=model.config.to_dict(), step=step, metrics=metrics,
                    frozen={k: dict(v) for k, v in frozen.items()})


def frozen_entry(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """What of a frozen part's checkpoint gets embedded: everything but its training state (optimizers)."""
    return {k: v for k, v in ckpt.items() if k != "train_state"}


def _load_embedded(entry: Mapping[str, Any], loader: Callable[[str | Path], nn.Module], name: str,
                   path: str | Path) -> nn.Module:
    """Rebuild a frozen part with its own loader (its format stays its owner's business): via a temp file."""
    fd, tmp = tempfile.mkstemp(suffix=f"-{name}.pt")
    os.close(fd)
    try:
        torch.save(dict(entry), tmp)
        return loader(tmp)
    except InputError as exc:
        raise CheckpointError(path, f"embedded {name} checkpoint: {exc.problem}") from None
    finally:
        os.unlink(tmp)


def load_emmn(path: str | Path) -> EmmnNet:
    """An `emmn.pt` from train_memory, strictly loaded, eval mode; everything it needs is inside the file."""
    from pipeline.core.checkpoints import load_training_state
    from pipeline.models.audio import load_audio_encoders

    ckpt = load_training_state(path)
    try:
        config = EmmnConfig.from_dict(ckpt["config"])
    except (InputError, TypeError) as exc:
        raise CheckpointError(path, f"bad EMMN config: {exc}") from None
    frozen = ckpt.get("frozen") or {}
    if "audio" not in frozen or (config.variant == "emmn" and "motion" not in frozen):
        raise CheckpointError(path, "the embedded frozen audio (and, for emmn, motion) checkpoints are missing")
    audio = _load_embedded(frozen["audio"], load_audio_encoders, "audio", path)
    motion = None
    if config.variant == "emmn":
        from pipeline.models.motion import load_motion

        motion = _load_embedded(frozen["motion"], load_motion, "motion", path)
    model = EmmnNet(config, audio, motion)
    for name, module in model.trainable_modules().items():
        if name not in ckpt["model"]:
            raise CheckpointError(path, f"no '{name}' in the checkpoint's model")
        try:
            load_strict(module, ckpt["model"][name], path)
        except CheckpointError as exc:
            raise CheckpointError(path, f"[{name}] {exc.problem}") from None
    model.step = int(ckpt["step"])
    model.metrics = dict(ckpt.get("metrics") or {})
    return model.eval()


__all__ = [
    "EmmnConfig", "EmmnNet", "EmmnOutput", "EmotionTable", "IdentityEncoder", "KeypointHead", "MouthDecoder",
    "VARIANTS", "frozen_entry", "keypoint_displacement", "load_emmn", "neutral_vector", "save_emmn",
]
