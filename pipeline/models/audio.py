"""EVP's audio emotion disentanglement (Ji et al., CVPR 2021), used by EMMN §3.3: content e_c, emotion e_e.

Layout and state-dict names follow EVP's `AutoEncoder2x` (train/disentanglement/code/models_content_cla.py,
see checkpoint-specs/evp_audio.json), authors' spellings included:
* `con_encoder` (E_c): per 25 fps frame, its [28,12] MFCC window -> conv units (conv no-bias + BN + ReLU)
  1->64->128, maxpool 3 stride (1,2), 128->256->256->512, maxpool 3 stride 2 -> 512x12x2 -> FC 2048 -> 256,
  ReLU after both FCs (`audio_eocder`, `audio_eocder_fc`).
* `emo_encoder` (E_e): the window transposed to [12,28] -> conv 1->64, maxpool (1,3)/(1,2), 64->128->256,
  maxpool (12,1), 256->512, maxpool (1,2) -> 512x1x6 -> FC 2048 -> 128, ReLU (`emotion_eocder`,
  `emotion_eocder_fc`). EVP classifies each window; EMMN needs one embedding per utterance, so the
  per-window embeddings are pooled over time: their mean (EVP layout, `temporal_channels` 0), or, with
  `temporal_channels` > 0, a temporal conv stack over them (`emo_temporal`) whose mean and standard
  deviation over time go through an FC + ReLU (`emo_pool_fc`): speaking rate and pitch movement live in
  how windows follow each other, which a mean of window embeddings cannot see.
  Option (`emotion_input: mel`, not EVP): E_e reads the Wav2Lip mel windows [80,16] instead (`emo_mel`, a
  1-D conv front over the mel sequence, then the same temporal stack). MFCC without c0 keeps neither
  loudness nor pitch (12 cepstra of 26 bands do not resolve harmonics); the mel spectrogram keeps both.
  Option (`prosody_channels` > 0, not EVP): a third input, pitch and loudness per 10 ms relative to the
  speaker's voice baseline (pipeline.audio.prosody), through its own conv branch (`emo_prosody`), mean+std pooled
  beside the temporal stack into `emo_pool_fc`. Without a baseline the training speakers' average stands in,
  and a fourth channel tells the branch so.
* `decoder` (D): [e_c, e_e] as [C,1,1] -> transposed convs (4x4, 8x6, 16x12, 28x12, 28x12) -> tanh x 90.
* `classify.last_fc`: e_e -> emotion logits.

With `standardize` (not EVP) the encoders read MFCC standardised per coefficient and the decoder's tanh
output is mapped back with the same statistics (buffers `mfcc_mean`, `mfcc_std`): the decoder then starts
at the MFCC mean instead of having to learn a per-coefficient offset through a x90 tanh.

`AudioConfig.evp()` is the released layout (the released file also holds unused `emo_encoder.last_fc`,
`emo_encoder.re_id*`: `import_evp_state_dict` drops them); `AudioConfig.scaled` gives CPU sizes from the
same class. Inputs are raw MFCC windows in MFCC units, as in EVP (standardised inside with `standardize`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.core.checkpoints import load_file, load_strict, strip_prefix
from pipeline.core.errors import CheckpointError, InputError
from pipeline.models.wav2lip import config_from_dict, scale_channels

WINDOW_ROWS, WINDOW_COEFFS = 28, 12
# the prosody input (pipeline.audio.prosody computes it): steps per video frame x channels
STEPS_PER_FRAME = 4  # 100 Hz at 25 fps: fast enough for syllable-rate pitch movement
CHANNELS = 3  # f0 (semitones), voiced, energy (dB)
MEL_BINS, MEL_STEPS = 80, 16
MEL_COLUMNS_PER_FRAME = 3  # Wav2Lip windows start int(3.2 i) apart at 25 fps: the first 3 columns of each tile time
EMOTION_INPUTS = ("mfcc", "mel")
# EVP's class order: MEAD's emotions alphabetically (MFCC_dtw.py `MEAD` list; EAMM uses the same).
EVP_EMOTIONS = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")
# Entries of the released files that no forward pass uses (see checkpoint-specs/evp_audio.json, notes).
EVP_UNUSED_PREFIXES = ("emo_encoder.last_fc.", "emo_encoder.re_id.", "emo_encoder.re_id_fc.")
# Parts of EVP's audio2lm model (AT_emoiton) that are not the disentanglement.
EVP_AUDIO2LM_PREFIXES = ("decoder.lstm", "lm_encoder.")


@dataclass(frozen=True)
class AudioConfig:
    """Widths of EVP's encoders/decoder, embedding sizes, the emotion classes and the temporal pooling."""

    emotions: tuple[str, ...] = EVP_EMOTIONS  # class order of `classify`
    content_channels: tuple[int, ...] = (64, 128, 256, 256, 512)
    content_hidden: int = 2048
    content_dim: int = 256
    emotion_channels: tuple[int, ...] = (64, 128, 256, 512)
    emotion_hidden: int = 2048
    emotion_dim: int = 128
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32)
    output_scale: float = 90.0  # decoder output = scale * tanh(.): MFCC units (standardised units with `standardize`)
    standardize: bool = False  # not EVP: MFCC standardised per coefficient with training statistics (buffers
    # mfcc_mean, mfcc_std) on the way in, and the decoder's standardised output mapped back to MFCC units
    emotion_input: str = "mfcc"  # mfcc: EVP's E_e on the MFCC windows | mel: E_e on the mel windows
    emotion_stride: int = 1  # mfcc E_e reads every n-th window (windows span 7 frames, so n <= 7 hears all audio)
    temporal_channels: int = 0  # 0: e_e = mean of window embeddings (EVP); > 0: temporal conv stack width
    temporal_layers: int = 2
    temporal_kernel: int = 5
    prosody_channels: int = 0  # not EVP: > 0 adds a conv branch over voice-relative pitch and loudness (pooled like
    # the temporal stack); needs temporal_channels > 0

    def __post_init__(self) -> None:
        lengths = {"content_channels": 5, "emotion_channels": 4, "decoder_channels": 4}
        for name, length in lengths.items():
            if len(getattr(self, name)) != length:
                raise InputError(None, f"AudioConfig.{name} needs {length} entries, got {len(getattr(self, name))}")
        if len(self.emotions) < 2 or len(set(self.emotions)) != len(self.emotions):
            raise InputError(None, f"AudioConfig.emotions needs >= 2 distinct names, got {list(self.emotions)}")
        if self.emotion_input not in EMOTION_INPUTS:
            raise InputError(None, f"AudioConfig.emotion_input must be one of {EMOTION_INPUTS}, "
                                   f"got {self.emotion_input!r}")
        if not 1 <= self.emotion_stride <= 7:
            raise InputError(None, f"AudioConfig.emotion_stride must be in 1..7, got {self.emotion_stride}")
        if self.temporal_channels < 0 or (self.temporal_channels and self.temporal_layers < 1):
            raise InputError(None, "AudioConfig: temporal_channels >= 0, and temporal_layers >= 1 when it is > 0")
        if self.prosody_channels < 0 or (self.prosody_channels and not self.temporal_channels):
            raise InputError(None, "AudioConfig: prosody_channels >= 0, and it needs temporal_channels > 0")
        if self.temporal_kernel % 2 == 0:
            raise InputError(None, f"AudioConfig.temporal_kernel must be odd, got {self.temporal_kernel}")

    @classmethod
    def evp(cls, emotions: tuple[str, ...] = EVP_EMOTIONS) -> AudioConfig:
        """The released AutoEncoder2x layout (encoders, decoder, classifier)."""
        return cls(emotions=tuple(emotions))

    @classmethod
    def scaled(cls, width: float, *, emotions: tuple[str, ...] = EVP_EMOTIONS, content_dim: int = 256,
               emotion_dim: int = 128, **changes: Any) -> AudioConfig:
        """EVP's depths with every channel and hidden width times `width`."""
        base = cls()
        return cls(emotions=tuple(emotions), content_channels=scale_channels(base.content_channels, width),
                   content_hidden=scale_channels((base.content_hidden,), width)[0], content_dim=content_dim,
                   emotion_channels=scale_channels(base.emotion_channels, width),
                   emotion_hidden=scale_channels((base.emotion_hidden,), width)[0], emotion_dim=emotion_dim,
                   decoder_channels=scale_channels(base.decoder_channels, width), **changes)

    def to_dict(self) -> dict[str, Any]:
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        data["emotions"] = [str(e) for e in self.emotions]  # plain str: weights-only checkpoints refuse numpy
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AudioConfig:
        return config_from_dict(cls, data)


def conv_unit(cin: int, cout: int) -> nn.Sequential:
    """EVP's `ops.conv2d`: 3x3 conv (stride 1, pad 1, no bias) -> BN -> ReLU; keys `0.weight`, `1.*`."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


class ContentEncoder(nn.Module):
    """EVP `Ct_encoder`: one [1,28,12] window -> content embedding (non-negative)."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        c = config.content_channels
        self.audio_eocder = nn.Sequential(
            conv_unit(1, c[0]), conv_unit(c[0], c[1]), nn.MaxPool2d(3, stride=(1, 2)),
            conv_unit(c[1], c[2]), conv_unit(c[2], c[3]), conv_unit(c[3], c[4]), nn.MaxPool2d(3, stride=(2, 2)))
        self.audio_eocder_fc = nn.Sequential(nn.Linear(c[4] * 12 * 2, config.content_hidden), nn.ReLU(True),
                                             nn.Linear(config.content_hidden, config.content_dim), nn.ReLU(True))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.audio_eocder_fc(self.audio_eocder(windows).flatten(1))


class EmotionNet(nn.Module):
    """EVP `EmotionNet` forward: one [1,28,12] window (transposed to [1,12,28]) -> 128-d, non-negative."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        c = config.emotion_channels
        self.emotion_eocder = nn.Sequential(
            conv_unit(1, c[0]), nn.MaxPool2d((1, 3), stride=(1, 2)), conv_unit(c[0], c[1]), conv_unit(c[1], c[2]),
            nn.MaxPool2d((12, 1), stride=(12, 1)), conv_unit(c[2], c[3]), nn.MaxPool2d((1, 2), stride=(1, 2)))
        self.emotion_eocder_fc = nn.Sequential(nn.Linear(c[3] * 6, config.emotion_hidden), nn.ReLU(True),
                                               nn.Linear(config.emotion_hidden, config.emotion_dim), nn.ReLU(True))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.emotion_eocder_fc(self.emotion_eocder(windows.transpose(2, 3)).flatten(1))


class MelEmotionNet(nn.Module):
    """Not EVP: mel windows [T,80,16] -> the mel sequence (first 3 columns of each window, [80,3T]) -> 1-D conv
    units, two max-pools -> per-step embeddings [emotion_dim, ~3T/4] (non-negative)."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        width = config.emotion_channels[-1]

        def unit(cin: int, cout: int, kernel: int) -> list[nn.Module]:
            return [nn.Conv1d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm1d(cout), nn.ReLU(True)]

        self.mel_eocder = nn.Sequential(*unit(MEL_BINS, width, 5), nn.MaxPool1d(2, ceil_mode=True),
                                        *unit(width, width, 5), nn.MaxPool1d(2, ceil_mode=True),
                                        *unit(width, config.emotion_dim, 3))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """[B,T,80,16] -> [B,T'',emotion_dim]."""
        b, t = mel.shape[:2]
        sequence = mel[..., :MEL_COLUMNS_PER_FRAME].permute(0, 2, 1, 3).reshape(b, MEL_BINS, t * MEL_COLUMNS_PER_FRAME)
        return self.mel_eocder(sequence).transpose(1, 2)


class ProsodyNet(nn.Module):
    """Not EVP: voice-relative prosody [B,T,4,4] (pipeline.audio.prosody.relative_prosody) as a 100 Hz sequence [4,4T]
    -> dilated 1-D conv units, two max-pools -> [B,prosody_channels,~T]: pitch level, range and movement,
    loudness and its rhythm, relative to the speaker (or, flagged, to the training voices' average)."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        width = config.prosody_channels

        def unit(cin: int, dilation: int) -> list[nn.Module]:
            return [nn.Conv1d(cin, width, 5, padding=2 * dilation, dilation=dilation, bias=False),
                    nn.BatchNorm1d(width), nn.ReLU(True)]

        self.units = nn.Sequential(*unit(CHANNELS + 1, 1), nn.MaxPool1d(2, ceil_mode=True),
                                   *unit(width, 2), nn.MaxPool1d(2, ceil_mode=True), *unit(width, 4))

    def forward(self, relative: torch.Tensor) -> torch.Tensor:
        b = relative.shape[0]
        return self.units(relative.reshape(b, -1, CHANNELS + 1).transpose(1, 2))


def mean_std_pool(h: torch.Tensor) -> torch.Tensor:
    """[B,C,T] -> [B,2C]: mean and (biased) standard deviation over time (0 for a single step)."""
    std = h.std(dim=2, unbiased=False) if h.shape[2] > 1 else torch.zeros_like(h[:, :, 0])
    return torch.cat([h.mean(dim=2), std], dim=1)


class Decoder(nn.Module):
    """EVP `Decoder`: [content, emotion] -> a [1,28,12] MFCC window, `output_scale * tanh`."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        d = config.decoder_channels
        self.output_scale = config.output_scale
        self.decon = nn.Sequential(
            nn.ConvTranspose2d(config.content_dim + config.emotion_dim, d[0], kernel_size=6, stride=2, padding=1),
            nn.BatchNorm2d(d[0]), nn.ReLU(True),  # 4x4
            nn.ConvTranspose2d(d[0], d[1], kernel_size=(4, 2), stride=2, padding=1),
            nn.BatchNorm2d(d[1]), nn.ReLU(True),  # 8x6
            nn.ConvTranspose2d(d[1], d[2], kernel_size=4, stride=2, padding=1),
            nn.BatchNorm2d(d[2]), nn.ReLU(True),  # 16x12
            nn.ConvTranspose2d(d[2], d[3], kernel_size=(4, 3), stride=(2, 1), padding=(3, 1)),
            nn.BatchNorm2d(d[3]), nn.ReLU(True),  # 28x12
            nn.ConvTranspose2d(d[3], 1, kernel_size=3, stride=1, padding=1),
            nn.Tanh())
        # The last layer starts small (not zero: gradients must reach E_c from the first step, or the content
        # loss alone drives the ReLU'd e_c to zero): first reconstructions sit near 0 (the mean, standardised)
        # instead of a saturated +-output_scale.
        with torch.no_grad():
            self.decon[12].weight.mul_(0.1)
            self.decon[12].bias.zero_()

    def forward(self, content: torch.Tensor, emotion: torch.Tensor) -> torch.Tensor:
        features = torch.cat([content, emotion], dim=1)[:, :, None, None]
        return self.output_scale * self.decon(features)


class Classify(nn.Module):
    def __init__(self, config: AudioConfig):
        super().__init__()
        self.last_fc = nn.Linear(config.emotion_dim, len(config.emotions))

    def forward(self, emotion: torch.Tensor) -> torch.Tensor:
        return self.last_fc(emotion)


class AudioEncoders(nn.Module):
    """E_c, E_e, D and the emotion classifier over sequences of EVP windows [B,T,28,12].

    encode_content -> e_c [B,T,content_dim] (per frame); encode_emotion -> e_e [B,emotion_dim] (pooled over
    the T frames given); decode(e_c, e_e) -> windows [B,T,28,12]; classify_emotion(e_e) -> logits over
    `config.emotions`.
    """

    def __init__(self, config: AudioConfig | None = None):
        super().__init__()
        self.config = config = config or AudioConfig.evp()
        self.con_encoder = ContentEncoder(config)
        if config.emotion_input == "mfcc":
            self.emo_encoder = EmotionNet(config)
        else:
            self.emo_mel = MelEmotionNet(config)
        self.decoder = Decoder(config)
        self.classify = Classify(config)
        if config.standardize:
            self.register_buffer("mfcc_mean", torch.zeros(WINDOW_COEFFS))
            self.register_buffer("mfcc_std", torch.ones(WINDOW_COEFFS))
        if config.temporal_channels:
            layers: list[nn.Module] = []
            cin = config.emotion_dim
            for i in range(config.temporal_layers):
                dilation = 2 ** i  # receptive field doubles per layer: a few layers span about a second
                layers += [nn.Conv1d(cin, config.temporal_channels, config.temporal_kernel, dilation=dilation,
                                     padding=dilation * (config.temporal_kernel // 2), bias=False),
                           nn.BatchNorm1d(config.temporal_channels), nn.ReLU(True)]
                cin = config.temporal_channels
            self.emo_temporal = nn.Sequential(*layers)
            pooled = 2 * config.temporal_channels
            if config.prosody_channels:
                self.emo_prosody = ProsodyNet(config)
                pooled += 2 * config.prosody_channels
                # the voice baseline assumed when the caller knows none: the training speakers' average
                self.register_buffer("voice_default", torch.zeros(2))
            self.emo_pool_fc = nn.Sequential(nn.Linear(pooled, config.emotion_dim), nn.ReLU(True))

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-coefficient MFCC statistics of the training data (models with `standardize`)."""
        if not self.config.standardize:
            raise InputError(None, "this AudioConfig has standardize off: no statistics to set")
        self.mfcc_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.mfcc_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-3))

    def _standardized(self, mfcc: torch.Tensor) -> torch.Tensor:
        return (mfcc - self.mfcc_mean) / self.mfcc_std if self.config.standardize else mfcc

    @staticmethod
    def _check(mfcc: torch.Tensor) -> None:
        if mfcc.ndim != 4 or tuple(mfcc.shape[2:]) != (WINDOW_ROWS, WINDOW_COEFFS) or mfcc.shape[1] < 1:
            raise InputError(None, f"expected MFCC windows [B,T,{WINDOW_ROWS},{WINDOW_COEFFS}] with T >= 1, "
                                   f"got {tuple(mfcc.shape)}")

    def encode_content(self, mfcc: torch.Tensor, encoder: nn.Module | None = None) -> torch.Tensor:
        """e_c per frame: [B,T,28,12] -> [B,T,content_dim]; `encoder`: another copy of E_c (a fine-tuned one)."""
        self._check(mfcc)
        b, t = mfcc.shape[:2]
        windows = self._standardized(mfcc).reshape(b * t, 1, WINDOW_ROWS, WINDOW_COEFFS)
        return (encoder or self.con_encoder)(windows).view(b, t, -1)

    @property
    def needs_mel(self) -> bool:
        return self.config.emotion_input == "mel"

    def window_emotions(self, mfcc: torch.Tensor | None, mel: torch.Tensor | None = None) -> torch.Tensor:
        """Per-step emotion embeddings before pooling, [B,T',emotion_dim]: EVP's embedding of every
        `emotion_stride`-th MFCC window, or (emotion_input mel) the mel front's steps."""
        if self.needs_mel:
            if mel is None or mel.ndim != 4 or tuple(mel.shape[2:]) != (MEL_BINS, MEL_STEPS) or mel.shape[1] < 1:
                raise InputError(None, f"this model's E_e reads mel windows [B,T,{MEL_BINS},{MEL_STEPS}] "
                                       f"(emotion_input mel), got {None if mel is None else tuple(mel.shape)}")
            return self.emo_mel(mel)
        self._check(mfcc)
        mfcc = self._standardized(mfcc[:, ::self.config.emotion_stride])
        b, t = mfcc.shape[:2]
        return self.emo_encoder(mfcc.reshape(b * t, 1, WINDOW_ROWS, WINDOW_COEFFS)).view(b, t, -1)

    @property
    def needs_prosody(self) -> bool:
        return bool(self.config.prosody_channels)

    def set_voice_default(self, voice: torch.Tensor) -> None:
        """The voice baseline (f0 semitones, energy dB) used when `encode_emotion` is given none."""
        self.voice_default.copy_(torch.as_tensor(voice, dtype=torch.float32))

    def encode_emotion(self, mfcc: torch.Tensor | None, mel: torch.Tensor | None = None,
                       prosody: torch.Tensor | None = None, voice: torch.Tensor | None = None) -> torch.Tensor:
        """e_e of each utterance: MFCC windows [B,T,28,12] (or, emotion_input mel, mel windows [B,T,80,16],
        the Wav2Lip mel of the same frames) [+ with prosody_channels, prosody [B,T,4,3] of the same frames
        and the speaker's voice baseline [B,2]; None or a NaN row: unknown, `voice_default` stands in and the
        branch is told so] -> [B,emotion_dim] (non-negative)."""
        per_window = self.window_emotions(mfcc, mel)
        if not self.config.temporal_channels:
            return per_window.mean(dim=1)
        pooled = [mean_std_pool(self.emo_temporal(per_window.transpose(1, 2)))]  # [B,2C]
        if self.needs_prosody:
            if prosody is None:
                raise InputError(None, "this model's E_e hears prosody (prosody_channels > 0): pass prosody "
                                       "[B,T,4,3] (pipeline.audio.prosody.frame_prosody)")
            unknown = torch.full((prosody.shape[0], 2), float("nan"), dtype=prosody.dtype, device=prosody.device)
            voice = unknown if voice is None else voice.to(prosody)
            pooled.append(mean_std_pool(self.emo_prosody(relative_prosody(prosody, voice, self.voice_default))))
        return self.emo_pool_fc(torch.cat(pooled, dim=1))

    def decode(self, content: torch.Tensor, emotion: torch.Tensor) -> torch.Tensor:
        """D(e_c, e_e): e_c [B,T,content_dim], e_e [B,emotion_dim] (the same for all T) -> [B,T,28,12]."""
        b, t = content.shape[:2]
        emotion = emotion[:, None, :].expand(b, t, emotion.shape[-1])
        out = self.decoder(content.reshape(b * t, -1), emotion.reshape(b * t, -1))
        out = out.view(b, t, WINDOW_ROWS, WINDOW_COEFFS)
        return out * self.mfcc_std + self.mfcc_mean if self.config.standardize else out

    def classify_emotion(self, emotion: torch.Tensor) -> torch.Tensor:
        return self.classify(emotion)

    @property
    def emotions(self) -> list[str]:
        return list(self.config.emotions)


# ------------------------------------------------------------------------------------------ checkpoints

ARCH = "evp_audio"


def load_audio_encoders(path: str | Path) -> AudioEncoders:
    """`data/models/audio.pt` ({model: {evp_audio: state}, config: {arch, model: AudioConfig}}) -> eval mode."""
    ckpt = load_file(path)
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        raise CheckpointError(path, "not a pipeline checkpoint (expected keys model, config)")
    config = ckpt["config"]
    if config.get("arch") != ARCH or ARCH not in ckpt["model"]:
        raise CheckpointError(path, f"not an audio encoder checkpoint (arch {config.get('arch')!r}, "
                                    f"expected {ARCH!r})")
    try:
        model = AudioEncoders(AudioConfig.from_dict(config["model"]))
    except InputError as exc:
        raise CheckpointError(path, f"bad audio encoder config: {exc.problem}") from None
    load_strict(model, ckpt["model"][ARCH], path)
    return model.eval()


def import_evp_state_dict(state_dict: dict[str, torch.Tensor], path: str | Path = "<state dict>", *,
                          encoders_only: bool = False) -> AudioEncoders:
    """EVP's released weights -> eval-mode AudioEncoders at `AudioConfig.evp()`, loaded strictly.

    Accepts the disentanglement checkpoint's `model` (AutoEncoder2x: encoders, decoder, classifier; the
    unused `emo_encoder.last_fc` / `re_id*` entries are dropped) or, with `encoders_only`, the audio2lm
    file (AT_emoiton): its `con_encoder` / `emo_encoder` are the disentanglement's, copied by EVP's landmark
    trainer; its LSTM and landmark encoder are not ours. Then the decoder and classifier keep their
    initial weights: e_c and e_e are EVP's, `classify_emotion` is not trained.
    A DataParallel `module.` prefix is removed.
    """
    state = strip_prefix(dict(state_dict), "module.")
    is_audio2lm = any(k.startswith(EVP_AUDIO2LM_PREFIXES) for k in state)
    if is_audio2lm and not encoders_only:
        raise CheckpointError(path, "this is EVP's audio2lm (AT_emoiton) file: it has no disentanglement "
                                    "decoder or classifier; import it with encoders_only")
    drop = EVP_UNUSED_PREFIXES + (EVP_AUDIO2LM_PREFIXES if is_audio2lm else ())
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    model = AudioEncoders(AudioConfig.evp())
    if encoders_only:
        keep = ("con_encoder.", "emo_encoder.")
        unexpected = sorted(k for k in state if not k.startswith(keep + ("decoder.decon.", "classify.")))
        if unexpected:
            raise CheckpointError(path, f"unexpected key '{unexpected[0]}' (not in EVP's audio encoders)")
        for name in ("con_encoder", "emo_encoder"):
            part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            load_strict(getattr(model, name), part, path)
    else:
        load_strict(model, state, path)
    return model.eval()


def load_official_evp_audio(path: str | Path, *, encoders_only: bool = False) -> AudioEncoders:
    """A released EVP file: `<epoch>_pretrain.pth` ({'model': AutoEncoder2x state, ...}) or, with
    `encoders_only`, `audio2lm/pth/M0xx_20.pth` (bare AT_emoiton state dict)."""
    obj = load_file(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(path, "no EVP state dict found (expected a tensor dict or {'model': ...})")
    return import_evp_state_dict(obj, path, encoders_only=encoders_only)



def relative_prosody(prosody: torch.Tensor, voice: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """prosody (B, T, 4, 3) from `frame_prosody`, voice (B, 2) from `voice_baseline` (a row of NaN: unknown, use
    `fallback` (2,)) -> (B, T, 4, 4): (f0 - base) / 12 (octaves) where voiced else 0, voiced, (energy - base) / 20
    clamped to [-3, 3], and 1 where the voice was known, 0 where the fallback stood in (so an encoder can tell
    a level relative to the speaker from one relative to an average voice)."""
    if prosody.ndim != 4 or prosody.shape[-2:] != (STEPS_PER_FRAME, CHANNELS) or voice.shape != (len(prosody), 2):
        raise InputError(None, f"expected prosody (B,T,{STEPS_PER_FRAME},{CHANNELS}) and voice (B,2), got "
                               f"{tuple(prosody.shape)} and {tuple(voice.shape)}")
    known = ~torch.isnan(voice).any(dim=1)
    voice = torch.where(known[:, None], voice, fallback.to(voice)[None])
    voiced = prosody[..., 1]
    pitch = (prosody[..., 0] - voice[:, None, None, 0]) / 12 * voiced
    energy = ((prosody[..., 2] - voice[:, None, None, 1]) / 20).clamp(-3.0, 3.0)
    return torch.stack([pitch, voiced, energy, known[:, None, None].to(pitch).expand_as(pitch)], dim=-1)
