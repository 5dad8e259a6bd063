"""Text-to-speech for the built-in corpus: espeak-ng through ctypes, with phoneme timings.

The library and its data come from the PyPI package `espeakng-loader`, so no system package
is needed. espeak-ng keeps global state and is not thread-safe: one lazily created engine
per process, every synthesis under a lock. It runs in synchronous mode (retrieval mode
without the worker thread that asynchronous retrieval adds): the callback fires on the
calling thread before `espeak_Synth` returns, so samples and events arrive in order.
"""

from __future__ import annotations

import _ctypes
import ctypes
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from pipeline.core.errors import InputError

OUTPUT_RATE = 16_000
PAD_S = 0.15  # silence before and after, so the mouth starts and ends at rest

# speak_lib.h constants (espeak-ng 1.52).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_DONT_EXIT = 0x8000  # report errors instead of calling exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7
_RATE_LIMITS = (80, 450)  # espeakRATE_MINIMUM / espeakRATE_MAXIMUM
_RAND_SEED = 0  # espeak adds random noise (e.g. breathiness); a fixed seed keeps output bit-identical

# espeak attributes a stop's closure silence to the phoneme before it and places the stop's
# event at the burst. These stops get their interval extended back over that silence.
_STOPS = frozenset({"p", "b", "t", "d", "k", "g", "tS", "dZ", "t#", "t2", "d#", "d2", "?"})
_STRESS_MARKS = "'%,=!"
_MAX_CLOSURE_S = 0.10  # longest closure attributed to a stop
_MIN_KEEP_S = 0.02  # the phoneme before a stop keeps at least this much of its interval
_SILENCE_HOP_S = 0.0025
_SILENCE_REL = 0.02  # window RMS below this fraction of the loud-window RMS counts as silence


@dataclass(frozen=True)
class PhonemeEvent:
    """One phoneme (espeak mnemonic, stress marks kept) over [start_s, end_s) of the audio."""

    start_s: float
    end_s: float
    phoneme: str


@dataclass
class Speech:
    """Synthesized speech: mono float32 samples in [-1, 1] plus phoneme and word timings (s)."""

    samples: np.ndarray
    sample_rate: int = OUTPUT_RATE
    phonemes: list[PhonemeEvent] = field(default_factory=list)
    words: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """espeak_EVENT; `sample` is the event's position in output samples (library rate)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class _Engine:
    """The process's espeak-ng: resolves the library and data, and synthesizes one utterance at a time.

    espeak-ng keeps synthesis state in C statics that no API resets (the pitch-flutter phase,
    the echo buffer, the gain control), so the same text came out up to 10 ms longer or
    shorter depending on what was spoken before. Each utterance therefore runs in a freshly
    loaded copy of the library (dlopen, initialise, synthesize, terminate, dlclose: ~2 ms),
    which makes the output a function of the call alone.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as error:
            raise InputError(None, f"espeak-ng unavailable: espeakng-loader not installed ({error})") from error
        self.library_path = espeakng_loader.get_library_path()
        try:
            self.data_path = Path(espeakng_loader.get_data_path())
        except RuntimeError as error:
            raise InputError(self.library_path, f"espeak-ng data directory missing: {error}") from error
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, int, str]] = []
        self._callback = _CALLBACK_TYPE(self._collect)  # held: ctypes must not free it
        self.sample_rate = self._run(lambda lib: None)[0]  # fail early if the library is unusable

    def _collect(self, wav, n_samples: int, events) -> int:
        if wav and n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n_samples,)).copy())
        index = 0
        while events[index].type != _EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == _EVENT_PHONEME:
                name = bytes(event.id.string).split(b"\0", 1)[0].decode("utf-8", "replace")
                self._events.append((event.type, event.sample, 0, 0, name))
            elif event.type == _EVENT_WORD:
                self._events.append((event.type, event.sample, event.text_position, event.length, ""))
            index += 1
        return 0  # continue synthesis

    def _run(self, work) -> tuple[int, object]:
        """Load and initialise a fresh library, call work(lib), then terminate and unload it."""
        try:
            lib = ctypes.CDLL(self.library_path)
        except OSError as error:
            raise InputError(self.library_path, f"cannot load libespeak-ng: {error}") from error
        try:
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            lib.espeak_Synth.argtypes = [
                ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
            ]
            sample_rate = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), _INIT_PHONEME_EVENTS | _INIT_DONT_EXIT
            )
            if sample_rate <= 0:
                raise InputError(self.data_path, "espeak-ng failed to initialise with this data directory")
            lib.espeak_SetSynthCallback(self._callback)
            try:
                return sample_rate, work(lib)
            finally:
                lib.espeak_Terminate()
        finally:
            _ctypes.dlclose(lib._handle)

    def synth(self, text: str, voice_name: str, parameters: dict[int, int]) -> tuple[np.ndarray, list]:
        """Raw int16 samples at the library rate and (type, sample, text_pos, length, phoneme) events."""

        def speak(lib) -> tuple[np.ndarray, list]:
            if lib.espeak_SetVoiceByName(voice_name.encode()) != _EE_OK:
                raise InputError(self.data_path / "lang", f"espeak-ng has no voice '{voice_name}'")
            for parameter, value in parameters.items():
                lib.espeak_SetParameter(parameter, value, 0)
            lib.espeak_ng_SetRandSeed(_RAND_SEED)
            self._chunks, self._events = [], []
            encoded = text.encode("utf-8")
            status = lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if status != _EE_OK:
                raise InputError(None, f"espeak-ng synthesis failed (status {status}) for text {text[:40]!r}")
            samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return samples, self._events

        self.sample_rate, result = self._run(speak)
        return result


_engine: _Engine | None = None
_lock = threading.Lock()


def _get_engine() -> _Engine:
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine


def available_variants() -> list[str]:
    """Names of the voice variants shipped with espeak-ng (`m1`..`m7`, `f1`..`f5`, ...)."""
    with _lock:
        return sorted(path.name for path in (_get_engine().data_path / "voices" / "!v").iterdir())


def variant_gender(variant: str) -> str:
    """"W" when the variant's file declares `gender female`, else "M" (espeak's default voice is male)."""
    path = _get_engine().data_path / "voices" / "!v" / variant
    if "/" in variant or not path.is_file():
        raise InputError(path, f"unknown espeak-ng voice variant '{variant}'")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    female = any(line.split()[:2] == ["gender", "female"] for line in lines if line.strip())
    return "W" if female else "M"


def _check_range(name: str, value: int, low: int, high: int) -> int:
    if not low <= int(value) <= high:
        raise InputError(None, f"speech parameter {name}={value} is outside [{low}, {high}]")
    return int(value)


def synthesize(
    text: str,
    *,
    voice: str = "en",
    variant: str | None = "m3",
    pitch: int = 50,
    pitch_range: int = 50,
    rate: int = 160,
    volume: int = 100,
    word_gap: int = 0,
) -> Speech:
    """Speak `text` with espeak-ng and return 16 kHz audio with phoneme and word timings.

    voice is an espeak language (`en`, `en-us`, ...), variant a file of voices/!v (None for
    the plain voice). pitch and pitch_range are 0..99, rate words per minute (80..450),
    volume 0..200, word_gap extra pause between words in units of 10 ms. The audio is
    trimmed to the speech and padded with PAD_S of silence on both sides; the same call
    always returns bit-identical samples.
    """
    if not text or not text.strip():
        raise InputError(None, "cannot synthesize empty text")
    parameters = {
        _PARAM_RATE: _check_range("rate", rate, *_RATE_LIMITS),
        _PARAM_PITCH: _check_range("pitch", pitch, 0, 99),
        _PARAM_RANGE: _check_range("pitch_range", pitch_range, 0, 99),
        _PARAM_VOLUME: _check_range("volume", volume, 0, 200),
        _PARAM_WORDGAP: _check_range("word_gap", word_gap, 0, 1000),
    }
    with _lock:
        engine = _get_engine()
        voice_name = voice
        if variant:
            variant_dir = engine.data_path / "voices" / "!v"
            if "/" in variant or not (variant_dir / variant).is_file():
                raise InputError(variant_dir, f"unknown espeak-ng voice variant '{variant}'")
            voice_name = f"{voice}+{variant}"
        raw, raw_events = engine.synth(text, voice_name, parameters)
        source_rate = engine.sample_rate
    return _to_speech(text, raw, raw_events, source_rate)


def _to_speech(text: str, raw: np.ndarray, raw_events: list, source_rate: int) -> Speech:
    """Trim, pad and resample the raw output; convert event sample positions to seconds."""
    audible = np.flatnonzero(np.abs(raw.astype(np.int32)) > 32)  # > -60 dBFS
    if audible.size == 0:
        raise InputError(None, f"espeak-ng produced no audible speech for text {text[:40]!r}")
    first, last = int(audible[0]), int(audible[-1]) + 1
    speech = raw[first:last].astype(np.float32) / 32768.0
    pad = np.zeros(int(round(PAD_S * source_rate)), np.float32)
    resampled = resample_poly(np.concatenate([pad, speech, pad]), OUTPUT_RATE, source_rate)
    samples = np.clip(resampled, -1.0, 1.0).astype(np.float32)
    speech_end = PAD_S + (last - first) / source_rate

    def to_seconds(sample: int) -> float:
        return float(np.clip(PAD_S + (sample - first) / source_rate, PAD_S, speech_end))

    phoneme_starts = [(to_seconds(s), name) for kind, s, _, _, name in raw_events if kind == _EVENT_PHONEME]
    phonemes = [
        PhonemeEvent(start, next_start, name)
        for (start, name), (next_start, _) in zip(phoneme_starts, phoneme_starts[1:] + [(speech_end, "")])
        if next_start > start
    ]
    phonemes = _extend_stops_into_closures(phonemes, samples)
    words = _words(text, raw_events, to_seconds, phonemes, speech_end)
    return Speech(samples=samples, sample_rate=OUTPUT_RATE, phonemes=phonemes, words=words)


def _words(text, raw_events, to_seconds, phonemes, speech_end) -> list[tuple[float, float, str]]:
    """Word intervals: from the WORD event to the next word or the next pause, whichever is first."""
    starts = [
        (to_seconds(s), text[max(position - 1, 0): max(position - 1, 0) + length])
        for kind, s, position, length, _ in raw_events
        if kind == _EVENT_WORD
    ]
    pauses = [event.start_s for event in phonemes if _is_pause(event.phoneme)]
    words = []
    for index, (start, word) in enumerate(starts):
        next_start = starts[index + 1][0] if index + 1 < len(starts) else speech_end
        end = min([next_start] + [p for p in pauses if p > start])
        words.append((start, max(end, start), word))
    return words


def _is_pause(phoneme: str) -> bool:
    return phoneme.startswith("_")


def _extend_stops_into_closures(phonemes: list[PhonemeEvent], samples: np.ndarray) -> list[PhonemeEvent]:
    """Move each stop's start back to the onset of its closure silence.

    espeak places a stop's event at the burst, so the silent closure (lips shut for p/b)
    sits at the end of the previous phoneme's interval. Articulation needs it on the stop.
    """
    hop = max(1, int(round(_SILENCE_HOP_S * OUTPUT_RATE)))
    n_windows = len(samples) // hop
    if n_windows == 0 or not phonemes:
        return phonemes
    rms = np.sqrt(np.mean(samples[: n_windows * hop].reshape(n_windows, hop).astype(np.float64) ** 2, axis=1))
    loud = np.percentile(rms, 95)
    silent = rms < max(_SILENCE_REL * loud, 1e-5)
    events = list(phonemes)
    for index, event in enumerate(events):
        if event.phoneme.lstrip(_STRESS_MARKS) not in _STOPS:
            continue
        previous_start = events[index - 1].start_s if index > 0 else 0.0
        limit = max(previous_start + (_MIN_KEEP_S if index > 0 else 0.0), event.start_s - _MAX_CLOSURE_S, 0.0)
        window = int(event.start_s / _SILENCE_HOP_S) - 1  # the window ending at the burst
        onset = event.start_s
        while window >= 0 and window * _SILENCE_HOP_S >= limit and silent[min(window, n_windows - 1)]:
            onset = window * _SILENCE_HOP_S
            window -= 1
        if onset < event.start_s:
            events[index] = PhonemeEvent(onset, event.end_s, event.phoneme)
            if index > 0:
                previous = events[index - 1]
                events[index - 1] = PhonemeEvent(previous.start_s, onset, previous.phoneme)
    return events
