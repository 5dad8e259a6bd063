"""How each MEAD emotion looks, moves and sounds in the built-in corpus.

Every emotion moves the upper face AND the mouth (a smile widens it, surprise opens the jaw,
sadness narrows it and pulls the corners down): the coupling between expression and mouth shape
that EMMN's memory is built to model. Values are the level-3 (strongest) targets; lower levels scale
them by `LEVEL_INTENSITY`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LEVEL_INTENSITY = {1: 0.45, 2: 0.72, 3: 1.0}


@dataclass(frozen=True)
class HeadStyle:
    amplitude: float = 1.0   # scales every pose oscillation
    frequency: float = 1.0   # scales their frequencies
    pitch_bias: float = 0.0  # degrees; + looks down
    yaw_bias: float = 0.0
    roll_bias: float = 0.0


@dataclass(frozen=True)
class Prosody:
    pitch: float = 0.0       # espeak pitch offset (0..99 scale)
    pitch_range: float = 0.0
    rate: float = 1.0        # speaking-rate factor
    volume: float = 1.0


@dataclass(frozen=True)
class EmotionStyle:
    face: dict[str, float] = field(default_factory=dict)  # expression targets (controls.py names)
    jaw_offset: float = 0.0      # added to the speech jaw opening
    round_offset: float = 0.0
    speech_gain: float = 1.0     # articulation size (angry over-articulates, sad under-articulates)
    head: HeadStyle = HeadStyle()
    prosody: Prosody = Prosody()


STYLES: dict[str, EmotionStyle] = {
    "neutral": EmotionStyle(),
    "angry": EmotionStyle(
        face={"brow_furrow": 0.95, "brow_raise": -0.45, "lid_open": -0.3, "mouth_corner": -0.35,
              "mouth_width": -0.15, "upper_lip_raise": 0.25, "nose_wrinkle": 0.2},
        speech_gain=1.25,
        head=HeadStyle(amplitude=1.35, frequency=1.5, pitch_bias=2.0),
        prosody=Prosody(pitch=6, pitch_range=20, rate=1.12, volume=1.3),
    ),
    "contempt": EmotionStyle(
        face={"smirk": 0.85, "brow_raise": 0.2, "lid_open": -0.35, "mouth_corner": 0.1, "mouth_width": -0.1},
        speech_gain=0.85,
        head=HeadStyle(amplitude=0.8, frequency=0.8, pitch_bias=-5.0, roll_bias=5.0, yaw_bias=4.0),
        prosody=Prosody(pitch=-4, pitch_range=-10, rate=0.9, volume=0.95),
    ),
    "disgusted": EmotionStyle(
        face={"nose_wrinkle": 0.95, "upper_lip_raise": 0.85, "brow_furrow": 0.55, "lid_open": -0.45,
              "cheek_raise": 0.45, "mouth_corner": -0.45, "mouth_width": -0.1},
        speech_gain=0.9,
        head=HeadStyle(amplitude=0.9, frequency=0.9, pitch_bias=-4.0, yaw_bias=-7.0),
        prosody=Prosody(pitch=-5, pitch_range=-5, rate=0.85, volume=1.0),
    ),
    "fear": EmotionStyle(
        face={"brow_raise": 0.7, "brow_inner_up": 0.85, "brow_furrow": 0.3, "lid_open": 0.85,
              "mouth_width": 0.45, "mouth_corner": -0.25},
        jaw_offset=0.15,
        head=HeadStyle(amplitude=0.6, frequency=2.2, pitch_bias=-2.0),
        prosody=Prosody(pitch=15, pitch_range=10, rate=1.2, volume=0.9),
    ),
    "happy": EmotionStyle(
        face={"mouth_corner": 0.95, "mouth_width": 0.65, "cheek_raise": 0.85, "lid_open": -0.3, "brow_raise": 0.15},
        jaw_offset=0.06,
        speech_gain=1.1,
        head=HeadStyle(amplitude=1.25, frequency=1.25, pitch_bias=-1.0, roll_bias=-3.0),
        prosody=Prosody(pitch=10, pitch_range=25, rate=1.1, volume=1.1),
    ),
    "sad": EmotionStyle(
        face={"brow_inner_up": 0.95, "brow_raise": -0.2, "lid_open": -0.5, "mouth_corner": -0.85,
              "mouth_width": -0.45},
        speech_gain=0.65,
        head=HeadStyle(amplitude=0.5, frequency=0.6, pitch_bias=9.0),
        prosody=Prosody(pitch=-8, pitch_range=-25, rate=0.8, volume=0.75),
    ),
    "surprised": EmotionStyle(
        face={"brow_raise": 1.0, "lid_open": 1.0, "mouth_width": -0.15},
        jaw_offset=0.35,
        round_offset=0.2,
        head=HeadStyle(amplitude=0.95, frequency=1.1, pitch_bias=-6.0),
        prosody=Prosody(pitch=18, pitch_range=30, rate=1.05, volume=1.15),
    ),
}


def style(emotion: str) -> EmotionStyle:
    if emotion not in STYLES:
        raise ValueError(f"unknown emotion '{emotion}'; known: {sorted(STYLES)}")
    return STYLES[emotion]


def intensity(level: int) -> float:
    if level not in LEVEL_INTENSITY:
        raise ValueError(f"unknown level {level}; MEAD levels are 1, 2, 3")
    return LEVEL_INTENSITY[level]
