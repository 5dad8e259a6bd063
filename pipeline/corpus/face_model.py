"""Parametric 3-D face of the synthetic corpus: identity, head surface, 68 landmarks, pose.

Canonical head coordinates: x to the image right (the subject's left), y down, z toward the
camera; one unit is about half the face width (jaw landmark 0 to 16 spans ~2 units). The head
surface is a height field z = head_height(x, y) over the frontal plane: the renderer ray-casts
the very same field, so landmarks (points on that surface, moved by the expression) and pixels
agree. Landmarks follow the dlib/iBUG 68-point order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pipeline.corpus.controls import NEUTRAL

HAIR_STYLES = ("short", "side_part", "bob", "long", "curly", "bun", "buzz")

# Framing at scale 1: pixels per canonical unit as a fraction of the frame size, and the canonical
# point that lands on the frame centre (also the pivot of head rotation).
PX_PER_UNIT = 0.31
PIVOT = np.array([0.0, 0.38, 0.0])
JAW_DROP = 0.38  # how far the chin moves down at jaw_open = 1 (units)

SKIN_TONES = np.array([  # light to dark, linear-ish RGB in 0..1; identities interpolate along it
    [0.96, 0.80, 0.69], [0.92, 0.72, 0.58], [0.84, 0.62, 0.47], [0.72, 0.50, 0.36],
    [0.56, 0.37, 0.25], [0.40, 0.26, 0.17], [0.30, 0.19, 0.13],
])
HAIR_COLOURS = np.array([
    [0.06, 0.05, 0.05], [0.16, 0.10, 0.07], [0.30, 0.19, 0.11], [0.48, 0.32, 0.18],
    [0.70, 0.55, 0.33], [0.55, 0.22, 0.10], [0.55, 0.53, 0.52],
])
IRIS_COLOURS = np.array([
    [0.25, 0.14, 0.07], [0.38, 0.24, 0.12], [0.30, 0.42, 0.55], [0.30, 0.45, 0.32], [0.45, 0.42, 0.30],
])


@dataclass(frozen=True)
class Identity:
    """Everything that stays fixed for one actor. Lengths are canonical units (see module doc)."""

    # head and face outline
    face_width: float = 1.0         # half-width of the head at the jaw top
    face_length: float = 1.0        # stretches the lower face (eye line to chin)
    jaw_squareness: float = 2.4     # superellipse exponent of the jaw (2 = oval, 3 = square)
    jaw_taper: float = 0.18         # narrows the chin
    crown_height: float = 1.85      # eye line to top of the skull
    head_depth: float = 1.0         # front-to-back bulge of the face
    cheekbones: float = 0.5         # 0..1 prominence
    # eyes
    eye_spacing: float = 0.42       # x of each eye centre
    eye_width: float = 0.34         # corner to corner
    eye_height: float = 0.12        # lid opening at rest
    eye_tilt: float = 0.015         # outer corner raised by this much
    eye_y: float = 0.0
    # brows
    brow_height: float = 0.30       # above the eye centre
    brow_thickness: float = 0.075
    brow_arch: float = 0.045
    brow_length: float = 0.62
    # nose
    nose_length: float = 0.55       # eye line to nose tip (y)
    nose_width: float = 0.21        # half-width at the alae
    nose_height: float = 0.36       # protrusion of the tip
    # mouth
    mouth_y: float = 0.88
    mouth_halfwidth: float = 0.37
    upper_lip: float = 0.075
    lower_lip: float = 0.10
    cupid_bow: float = 0.02
    chin_length: float = 0.42       # mouth line to chin bottom
    ear_size: float = 1.0
    # colours (RGB 0..1)
    skin: tuple[float, float, float] = (0.84, 0.62, 0.47)
    lip: tuple[float, float, float] = (0.72, 0.36, 0.34)
    blush: float = 0.15
    hair: tuple[float, float, float] = (0.16, 0.10, 0.07)
    hair_style: str = "short"
    hair_volume: float = 1.0
    hair_part: float = 0.3          # -1..1 parting position
    fringe: float = 0.0             # 0..1 how far the fringe falls
    brow_colour: tuple[float, float, float] = (0.12, 0.08, 0.06)
    iris: tuple[float, float, float] = (0.30, 0.20, 0.10)
    stubble: float = 0.0            # 0..1 beard shadow
    freckles: float = 0.0
    shirt: tuple[float, float, float] = (0.2, 0.3, 0.5)
    background_top: tuple[float, float, float] = (0.55, 0.6, 0.65)
    background_bottom: tuple[float, float, float] = (0.35, 0.4, 0.45)
    background_angle: float = 0.0   # radians of the gradient direction
    # lighting (world frame, applied after pose)
    light_azimuth: float = -30.0    # degrees, negative = light from the image left
    light_elevation: float = 30.0   # degrees above the horizon
    light_intensity: float = 0.9
    ambient: float = 0.42
    texture_seed: int = 0

    def __post_init__(self):
        if self.hair_style not in HAIR_STYLES:
            raise ValueError(f"unknown hair_style {self.hair_style!r}; known: {HAIR_STYLES}")


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> tuple[float, float, float]:
    """A colour between two neighbouring palette entries, slightly jittered."""
    t = rng.uniform(0, len(palette) - 1)
    i = min(int(t), len(palette) - 2)
    c = palette[i] + (palette[i + 1] - palette[i]) * (t - i)
    c = np.clip(c * rng.uniform(1 - jitter, 1 + jitter, 3), 0.02, 0.98)
    return tuple(float(v) for v in c)


def _hsv_colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> np.ndarray:
    """Random RGB colour with saturation and value in the given ranges."""
    h, s, v = rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def sample_identity(rng: np.random.Generator) -> Identity:
    """A random, plausible actor: shape, features, colours, hair, background and light."""
    u = rng.uniform
    skin = _pick(rng, SKIN_TONES, 0.04)
    darkness = 1.0 - float(np.mean(skin))
    hair_style = str(rng.choice(HAIR_STYLES, p=[0.2, 0.17, 0.15, 0.17, 0.11, 0.1, 0.1]))
    grey = rng.uniform() < 0.08
    hair = _pick(rng, HAIR_COLOURS[:6] if darkness < 0.5 else HAIR_COLOURS[:3], 0.08)
    if grey:
        hair = tuple(float(v) for v in HAIR_COLOURS[6] * u(0.85, 1.3))
    brow = tuple(float(v) for v in np.clip(np.array(hair) * 0.6 + np.array([0.04, 0.025, 0.015]), 0.03, 0.55))
    lip_base = np.array(skin) * np.array([0.92, 0.58, 0.6]) + np.array([0.02, 0.0, 0.02])
    lip = tuple(float(v) for v in np.clip(lip_base * u(0.9, 1.1, 3), 0.05, 0.95))
    iris = _pick(rng, IRIS_COLOURS if darkness < 0.45 else IRIS_COLOURS[:2], 0.1)
    bg1 = _hsv_colour(rng, (0.05, 0.45), (0.35, 0.85))
    bg2 = np.clip(bg1 * u(0.55, 0.85) + _hsv_colour(rng, (0.0, 0.3), (0.0, 0.15)), 0, 1)
    fringe = float(u(0.3, 1.0)) if hair_style in ("bob", "long", "side_part") and u() < 0.6 else 0.0
    return Identity(
        face_width=u(0.93, 1.06), face_length=u(0.95, 1.05), jaw_squareness=u(2.0, 3.2),
        jaw_taper=u(0.08, 0.3), crown_height=u(1.75, 1.95), head_depth=u(0.9, 1.1), cheekbones=u(0.2, 1.0),
        eye_spacing=u(0.4, 0.46), eye_width=u(0.33, 0.39), eye_height=u(0.105, 0.14),
        eye_tilt=u(-0.01, 0.04), eye_y=u(-0.03, 0.03),
        brow_height=u(0.27, 0.35), brow_thickness=u(0.055, 0.1), brow_arch=u(0.02, 0.07),
        brow_length=u(0.56, 0.66),
        nose_length=u(0.5, 0.6), nose_width=u(0.17, 0.25), nose_height=u(0.3, 0.42),
        mouth_y=u(0.84, 0.9), mouth_halfwidth=u(0.33, 0.41), upper_lip=u(0.055, 0.095),
        lower_lip=u(0.08, 0.13), cupid_bow=u(0.01, 0.03), chin_length=u(0.36, 0.44),
        ear_size=u(0.85, 1.15),
        skin=skin, lip=lip, blush=u(0.0, 0.3),
        hair=hair, hair_style=hair_style, hair_volume=u(0.8, 1.2), hair_part=u(-1, 1), fringe=fringe,
        brow_colour=brow, iris=iris,
        stubble=float(u(0.2, 0.7)) if u() < 0.22 else 0.0, freckles=float(u(0.3, 1.0)) if u() < 0.15 else 0.0,
        shirt=tuple(float(v) for v in _hsv_colour(rng, (0.1, 0.7), (0.15, 0.8))),
        background_top=tuple(float(v) for v in bg1), background_bottom=tuple(float(v) for v in bg2),
        background_angle=u(-0.6, 0.6),
        light_azimuth=u(-55, 55), light_elevation=u(15, 50), light_intensity=u(0.8, 1.0),
        ambient=u(0.35, 0.5), texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


# ----------------------------------------------------------------------------- head surface

def jaw_top_y(ident: Identity) -> float:
    """y where the cranium ends and the jaw outline starts (about ear-tragus level)."""
    return ident.eye_y + 0.02


def chin_y(ident: Identity) -> float:
    """y of the bottom of the chin at rest."""
    return ident.mouth_y * ident.face_length + ident.chin_length


def outline_halfwidth(ident: Identity, y: np.ndarray) -> np.ndarray:
    """Half-width of the head outline seen from the front, for each y (0 where there is no head)."""
    y = np.asarray(y, dtype=np.float64)
    y0, yc, top = jaw_top_y(ident), chin_y(ident), ident.eye_y - ident.crown_height
    w0 = ident.face_width
    # skull: widest a little above the eyes, then an ellipse up to the crown
    y_wide = y0 - 0.55
    skull = 1.04 * w0 * np.sqrt(np.clip(1 - ((y - y_wide) / (top - y_wide)) ** 2, 0, 1))
    upper = np.where(y < y_wide, skull, 1.04 * w0 + (w0 - 1.04 * w0) * np.clip((y - y_wide) / (y0 - y_wide), 0, 1))
    t = np.clip((y - y0) / (yc - y0), 0, 1)
    n = ident.jaw_squareness
    jaw = w0 * (1 - t ** n) ** (1 / n) * (1 - ident.jaw_taper * t)
    return np.where(y < y0, upper, np.where(y <= yc, jaw, 0.0))


def jaw_points(ident: Identity) -> np.ndarray:
    """The 17 jaw landmarks (x, y) on the jaw outline, from the subject's right ear to the left."""
    y0, yc, n = jaw_top_y(ident), chin_y(ident), ident.jaw_squareness
    phi = np.linspace(0, np.pi, 17)
    c, s = np.cos(phi), np.sin(phi)
    t = np.abs(s) ** (2 / n)
    x = -ident.face_width * np.sign(c) * np.abs(c) ** (2 / n) * (1 - ident.jaw_taper * t)
    y = y0 + (yc - y0) * t
    return np.stack([x * 0.985, y], axis=1)


def _gauss(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def head_height(ident: Identity, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height z of the neutral head surface over the frontal point (x, y); vectorised.

    A superellipse cross-section per row (flat face, steep sides), a forehead that curves back to
    the crown, a chin whose underside rolls back toward the neck, plus smooth bumps for the brow
    ridge, eye sockets, nose, cheekbones, the teeth arch, lips and chin.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.maximum(outline_halfwidth(ident, y), 1e-3)
    r = np.clip(np.abs(x) / w, 0, 1)
    cross = (1 - r ** 2.6) ** (1 / 2.6)
    ey, top, yc = ident.eye_y, ident.eye_y - ident.crown_height, chin_y(ident)
    # front-to-back profile: full on the face, an ellipse above the brows, rolled under at the chin
    y_fore = ey - 0.55
    above = np.sqrt(np.clip(1 - ((y - y_fore) / (top - y_fore)) ** 2, 0, 1))
    depth = np.where(y < y_fore, 0.25 + 0.75 * above, 1.0)
    under = np.clip((yc - y) / 0.28, 0, 1)
    depth = depth * (0.55 + 0.45 * np.sqrt(1 - (1 - under) ** 2))
    z = ident.head_depth * depth * cross

    ex, nl, nw, nh, my = ident.eye_spacing, ident.nose_length, ident.nose_width, ident.nose_height, ident.mouth_y
    my = my * ident.face_length
    ny = ey + nl
    bump = np.zeros_like(z)
    bump += 0.05 * _gauss(x, y, 0, ey - 0.24, 0.55, 0.07)                       # brow ridge
    for sgn in (-1, 1):
        bump -= 0.12 * _gauss(x, y, sgn * ex, ey - 0.02, 0.17, 0.11)           # eye socket
        bump += 0.07 * _gauss(x, y, sgn * ex, ey, 0.12, 0.065)                 # eyeball under the lids
        bump += 0.07 * ident.cheekbones * _gauss(x, y, sgn * 0.6, ey + 0.3, 0.2, 0.16)
        bump += 0.09 * _gauss(x, y, sgn * nw * 0.82, ny + 0.035, 0.065, 0.055)  # alae
        bump -= 0.03 * _gauss(x, y, sgn * 0.85, ey - 0.45, 0.14, 0.16)          # temples
    # nose: a ridge from the root to the tip that widens and rises, then drops under the tip
    y_root = ey - 0.1
    t = np.clip((y - y_root) / (ny - y_root), 0, None)
    ridge_h = nh * (0.16 + 0.84 * np.clip(t, 0, 1) ** 1.3)
    ridge_w = 0.055 + 0.06 * np.clip(t, 0, 1)
    fall = np.where(y > ny, np.exp(-0.5 * ((y - ny) / 0.045) ** 2), 1.0)
    rise = np.where(y < y_root, np.exp(-0.5 * ((y - y_root) / 0.045) ** 2), 1.0)
    bump += ridge_h * np.exp(-0.5 * (x / ridge_w) ** 2) * fall * rise
    bump += 0.05 * _gauss(x, y, 0, ny - 0.02, 0.07, 0.05)                       # tip bulb
    # mouth: the teeth arch pushes the lips forward; lips; groove under the lower lip; chin
    bump += 0.12 * _gauss(x, y, 0, my, 0.42, 0.22)
    bump += 0.045 * _gauss(x, y, 0, my - ident.upper_lip * 0.5, 0.25, 0.035)
    bump += 0.055 * _gauss(x, y, 0, my + ident.lower_lip * 0.55, 0.24, 0.045)
    bump -= 0.025 * _gauss(x, y, 0, my - ident.upper_lip - 0.07, 0.03, 0.05)   # philtrum
    bump -= 0.035 * _gauss(x, y, 0, my + ident.lower_lip + 0.07, 0.18, 0.04)   # labiomental groove
    bump += 0.06 * _gauss(x, y, 0, yc - 0.14, 0.16, 0.09)                      # chin
    inside = (np.abs(x) < w) & (y > top) & (y < yc)
    return np.where(inside, z + bump * cross, 0.0)


# ----------------------------------------------------------------------------- landmarks

# Expression controls are clamped to these ranges (a little past the nominal ones, so tracks that
# overshoot by a wobble still move the face); pose controls are used as given.
CONTROL_RANGES = {name: (0.0, 1.2) for name in ("jaw_open", "lip_spread", "lip_round", "lip_closure", "smirk",
                                                 "upper_lip_raise", "brow_furrow", "brow_inner_up", "cheek_raise",
                                                 "nose_wrinkle")}
CONTROL_RANGES.update({name: (-1.2, 1.2) for name in ("mouth_corner", "mouth_width", "brow_raise", "lid_open")})
CONTROL_RANGES["blink"] = (0.0, 1.0)


class ResolvedControls(dict):
    """Controls already completed and clamped by resolve_controls (resolving them again is free)."""


def resolve_controls(controls: Mapping[str, float] | None) -> ResolvedControls:
    """NEUTRAL updated with `controls`, expression values clamped to CONTROL_RANGES.

    Raises ValueError for a name that is not in controls.ALL_CONTROLS (a typo would otherwise be
    silently ignored) or a value that is not finite.
    """
    if isinstance(controls, ResolvedControls):
        return controls
    out = ResolvedControls(NEUTRAL)
    if controls:
        unknown = set(controls) - out.keys()
        if unknown:
            raise ValueError(f"unknown face controls {sorted(unknown)}; known: {sorted(out)}")
        out.update({k: float(v) for k, v in controls.items()})
        if not all(math.isfinite(v) for v in out.values()):
            raise ValueError(f"face controls must be finite, got {controls}")
    for name, (lo, hi) in CONTROL_RANGES.items():
        out[name] = min(max(out[name], lo), hi)
    return out


def _eye(ident: Identity, side: int, c: Mapping[str, float]) -> np.ndarray:
    """Six eye landmarks (x, y) for one eye; side -1 = subject's right (image left).

    Order follows iBUG: outer corner, two upper lid points, inner corner, two lower lid points for the
    right eye; the left eye starts at its inner corner (mirrored order).
    """
    cx, cy, hw = side * ident.eye_spacing, ident.eye_y, ident.eye_width / 2
    outer = np.array([cx + side * hw, cy - ident.eye_tilt])
    inner = np.array([cx - side * hw, cy + 0.008])
    lid_open = c["lid_open"]
    upper_h = ident.eye_height * 0.62 * (1 + (0.5 if lid_open > 0 else 0.45) * lid_open)
    upper_h *= 1 - 0.18 * max(0.0, -c["brow_raise"]) - 0.15 * max(0.0, c["brow_furrow"]) \
        - 0.25 * max(0.0, c["cheek_raise"])
    lower_h = ident.eye_height * 0.38 * (1 - 0.55 * c["cheek_raise"]
                                         - 0.25 * max(0.0, -lid_open) + 0.1 * max(0.0, lid_open))
    blink = c["blink"]
    pts = []
    for frac in (1 / 3, 2 / 3):  # walking from the outer corner to the inner one
        base = outer + (inner - outer) * frac
        bulge = np.sin(np.pi * frac) / np.sin(np.pi / 3)
        lower_y = base[1] + lower_h * bulge
        upper_y = base[1] - upper_h * bulge * (1.06 if frac < 0.5 else 0.94)
        pts.append((base[0], upper_y + (lower_y - upper_y) * blink, lower_y))
    (x1, u1, l1), (x2, u2, l2) = pts
    if side < 0:  # 36 outer, 37, 38, 39 inner, 40, 41
        return np.array([outer, [x1, u1], [x2, u2], inner, [x2, l2], [x1, l1]])
    # 42 inner, 43, 44, 45 outer, 46, 47
    return np.array([inner, [x2, u2], [x1, u1], outer, [x1, l1], [x2, l2]])


_BROW_S = np.linspace(0, 1, 5)


def _brow(ident: Identity, side: int, c: Mapping[str, float]) -> np.ndarray:
    """Five brow landmarks, ordered image left to right (17..21 for the right brow, 22..26 left)."""
    s = _BROW_S  # 0 = inner end, 1 = outer end
    inner_x = 0.13 + 0.3 * (ident.eye_spacing - 0.42)
    x = side * (inner_x + ident.brow_length * s)
    base = ident.eye_y - ident.brow_height
    y = base - ident.brow_arch * np.sin(np.pi * (0.15 + 0.75 * s)) + 0.03 * s ** 2 + 0.012 * (1 - s)
    raise_, furrow, inner_up = c["brow_raise"], c["brow_furrow"], c["brow_inner_up"]
    y = y - 0.1 * raise_ * (0.85 + 0.15 * s)
    y = y + max(furrow, 0) * (0.07 * (1 - s) ** 1.5 + 0.015)
    x = x - side * max(furrow, 0) * 0.05 * (1 - s)
    y = y - max(inner_up, 0) * (0.11 * (1 - s) ** 2 - 0.015 * s)
    pts = np.stack([x, y], axis=1)
    return pts[::-1] if side < 0 else pts


def _profile(f: float, e: float) -> float:
    """1 at the lip centre falling to 0 at the corner (f = -1 or 1); e shapes it (e < 1 is rounder)."""
    return max(1.0 - f * f, 0.0) ** e


def _mouth(ident: Identity, c: Mapping[str, float]) -> tuple[np.ndarray, float]:
    """Outer (12) and inner (8) lip landmarks (x, y) in iBUG order, and the jaw drop.

    Every lip contour blends from its centre height to the corner height of its side, so raising a
    corner curves the whole mouth (smile) and the inner gap tapers to zero at the corners.
    """
    jaw = c["jaw_open"]
    spread, rnd, closure = c["lip_spread"], c["lip_round"], c["lip_closure"]
    corner, width = c["mouth_corner"], c["mouth_width"]
    smirk, ulr = c["smirk"], c["upper_lip_raise"]
    open_ = 1 - min(closure, 1.0)
    my = ident.mouth_y * ident.face_length
    drop = JAW_DROP * jaw
    hw = ident.mouth_halfwidth * (1 + 0.25 * width + 0.17 * spread - 0.34 * rnd - 0.07 * jaw + 0.05 * max(corner, 0))
    gap = (0.9 * drop + 0.05 * rnd) * open_
    show = 0.05 * ulr * open_  # a raised upper lip uncovers the teeth even with the jaw shut
    tu = ident.upper_lip * (1 - 0.25 * spread + 0.3 * rnd - 0.3 * closure)
    tl = ident.lower_lip * (1 - 0.25 * spread + 0.25 * rnd - 0.3 * closure) + 0.25 * drop * closure
    up_in, lo_in = my - 0.12 * gap - show, my + 0.88 * gap
    corner_y = my + 0.38 * gap - 0.085 * corner
    sides = {-1: (corner_y, hw), 1: (corner_y - 0.1 * smirk, hw + 0.05 * smirk)}  # smirk: subject's left
    e_in = 1.0 - 0.5 * min(rnd, 1.0)
    bow_peak = ident.cupid_bow

    def outer_pt(f: float, upper: bool) -> tuple[float, float]:
        cy, h = sides[1 if f > 0 else -1]
        fa = abs(f)
        if upper:
            bow = bow_peak * math.exp(-(((fa - 0.26) / 0.12) ** 2))
            y = cy + (up_in - cy) * _profile(fa, 1.0) - (tu + 0.025 * ulr) * _profile(fa, 0.6) - bow
        else:
            y = cy + (lo_in - cy) * _profile(fa, 1.0) + tl * _profile(fa, 0.7)
        return f * h, y

    def inner_pt(g: float, upper: bool) -> tuple[float, float]:
        cy, h = sides[1 if g > 0 else -1]
        h_in = h * (0.9 - 0.25 * min(rnd, 1.0))
        mid = up_in if upper else lo_in
        return g * h_in, cy + (mid - cy) * _profile(abs(g), e_in)

    outer = [outer_pt(f, True) for f in (-1.0, -0.62, -0.26, 0.0, 0.26, 0.62, 1.0)]
    outer += [outer_pt(f, False) for f in (0.62, 0.28, 0.0, -0.28, -0.62)]
    inner = [inner_pt(g, True) for g in (-1.0, -0.45, 0.0, 0.45, 1.0)]
    inner += [inner_pt(g, False) for g in (0.45, 0.0, -0.45)]
    outer[0] = (outer[0][0], sides[-1][0])  # the corners themselves sit exactly on the corner line
    outer[6] = (outer[6][0], sides[1][0])
    return np.array(outer + inner, dtype=np.float64), drop


def _nose(ident: Identity, c: Mapping[str, float]) -> np.ndarray:
    """Nose landmarks 27..35 (x, y): bridge from the root to the tip, then the base right to left."""
    ey, ny, nw = ident.eye_y, ident.eye_y + ident.nose_length, ident.nose_width
    wr = c["nose_wrinkle"]
    bridge = [(0.0, ey - 0.1 + (ny - 0.02 - (ey - 0.1)) * k / 3) for k in range(4)]
    bridge[3] = (0.0, ny - 0.015 * wr)
    base_y = ny + 0.06 - 0.04 * wr
    xs = np.array([-1.0, -0.5, 0.0, 0.5, 1.0]) * nw * (0.85 + 0.08 * wr)
    ys = base_y + np.array([-0.025, 0.012, 0.025, 0.012, -0.025])
    return np.concatenate([np.array(bridge), np.stack([xs, ys], axis=1)])


def _lip_protrusion(ident: Identity, c: Mapping[str, float], pts: np.ndarray) -> np.ndarray:
    """Extra z of mouth points: rounding pushes the lips forward, most at the centre."""
    rnd = c["lip_round"]
    rel = np.clip(np.abs(pts[:, 0]) / ident.mouth_halfwidth, 0, 1)
    return 0.11 * rnd * (1 - 0.6 * rel ** 2) - 0.03 * c["lip_spread"]


def face_points(ident: Identity, controls: Mapping[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(68,3) landmarks and (K,3) auxiliary points (AUX_NAMES) of the deformed face.

    Points are built in the frontal plane; each keeps the surface height of its neutral position
    (so the skin displacement between neutral and now is a clean 3-D vector), plus expression
    offsets in depth: the jaw swings back as it drops, rounded lips push forward.
    """
    c = resolve_controls(controls)
    mouth, drop = _mouth(ident, c)
    w_jaw = _JAW_WEIGHTS
    rest = _rest(ident)
    xy = np.concatenate([rest.jaw_xy, _brow(ident, -1, c), _brow(ident, 1, c), _nose(ident, c),
                         _eye(ident, -1, c), _eye(ident, 1, c), mouth])
    xy[:17, 1] += drop * w_jaw
    z = rest.landmark_z.copy()
    z[:17] -= 0.25 * drop * w_jaw
    z[48:] += _lip_protrusion(ident, c, xy[48:])
    aux_xy = _aux_xy(ident, c, drop)
    aux_z = rest.aux_z - 0.25 * drop * _AUX_ON_JAW
    return np.concatenate([xy, z[:, None]], axis=1), np.concatenate([aux_xy, aux_z[:, None]], axis=1)


_JAW_WEIGHTS = np.sin(np.linspace(0, np.pi, 17)) ** 2  # how much each jaw point follows the chin

AUX_NAMES = ("cheek_r", "cheek_l", "fold_r", "fold_l", "chin", "teeth_up_r", "teeth_up_c", "teeth_up_l",
             "teeth_lo_r", "teeth_lo_c", "teeth_lo_l", "tongue", "under_chin_r", "under_chin_c", "under_chin_l")
_AUX_BEHIND_LIPS = np.array([0.0] * 5 + [0.07] * 7 + [0.0] * 3)  # teeth and tongue sit behind the lips
_AUX_ON_JAW = np.array([0.0] * 8 + [1.0] * 7)                      # lower teeth, tongue, under the chin


def _aux_xy(ident: Identity, c: Mapping[str, float], drop: float) -> np.ndarray:
    """Auxiliary points (x, y) named in AUX_NAMES, expression applied.

    Cheek and fold points steer the skin deformation; the upper teeth hang from the skull and the
    lower teeth and tongue ride on the jaw, so an opening mouth uncovers the lower teeth; points under
    the chin ride with the jaw so the skin there stretches without folding.
    """
    my = ident.mouth_y * ident.face_length
    cheek = c["cheek_raise"]
    smile = max(float(c["mouth_corner"]), 0.0)
    pts = [(s * 0.56, ident.eye_y + 0.4 - 0.08 * cheek - 0.03 * smile) for s in (-1, 1)]
    pts += [(s * (ident.nose_width + 0.13 + 0.02 * smile), my - 0.13 - 0.03 * cheek - 0.03 * smile) for s in (-1, 1)]
    pts.append((0.0, chin_y(ident) - 0.15 + drop))
    hw = ident.mouth_halfwidth * 0.8
    pts += [(s * hw, my + 0.04 - 0.03 * abs(s)) for s in (-1, 0, 1)]
    pts += [(s * hw, my + 0.02 + 0.72 * drop - 0.01 * abs(s)) for s in (-1, 0, 1)]
    pts.append((0.0, my + 0.07 + 0.75 * drop))
    pts += [(s * 0.45, chin_y(ident) + 0.22 + drop * (1 - 0.2 * abs(s))) for s in (-1, 0, 1)]
    return np.array(pts, dtype=np.float64)


@dataclass(frozen=True)
class _Rest:
    jaw_xy: np.ndarray
    landmark_z: np.ndarray
    aux_z: np.ndarray


_REST_CACHE: dict[Identity, _Rest] = {}


def _rest(ident: Identity) -> _Rest:
    """Per-identity constants of face_points: jaw outline and neutral surface heights (cached)."""
    hit = _REST_CACHE.get(ident)
    if hit is None:
        c = dict(NEUTRAL)
        mouth, _ = _mouth(ident, c)
        jaw = jaw_points(ident)
        xy = np.concatenate([jaw, _brow(ident, -1, c), _brow(ident, 1, c), _nose(ident, c),
                             _eye(ident, -1, c), _eye(ident, 1, c), mouth])
        on_jaw = np.arange(68) < 17  # sample the jaw just inside the outline, where the surface still is
        z = head_height(ident, xy[:, 0] * np.where(on_jaw, 0.97, 1.0),
                        np.where(on_jaw, np.minimum(xy[:, 1], chin_y(ident) - 0.03), xy[:, 1]))
        aux = _aux_xy(ident, c, 0.0)
        aux_z = head_height(ident, aux[:, 0], np.minimum(aux[:, 1], chin_y(ident) - 0.05)) - _AUX_BEHIND_LIPS
        hit = _Rest(jaw, z, aux_z)
        if len(_REST_CACHE) > 256:
            _REST_CACHE.clear()
        _REST_CACHE[ident] = hit
    return hit


def landmarks_3d(identity: Identity, controls: Mapping[str, float] | None = None) -> np.ndarray:
    """The deformed (68,3) landmark template in canonical head coordinates (no pose applied)."""
    return face_points(identity, controls)[0]


# ----------------------------------------------------------------------------- pose and camera

@lru_cache(maxsize=64)
def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Head rotation for angles in degrees (read-only array; cached, a frame asks several times).

    yaw > 0 turns the face toward the image right, pitch > 0 nods the chin down, roll > 0 tilts the
    head clockwise in the image. R = Rz(roll) @ Ry(yaw) @ Rx(pitch).
    """
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    out = rz @ ry @ rx
    out.flags.writeable = False
    return out


def camera(controls: Mapping[str, float] | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Weak-perspective camera of a frame: (2,3) matrix M and offset c with px = M @ (p - PIVOT) + c."""
    c = resolve_controls(controls)
    rot = rotation(c["yaw"], c["pitch"], c["roll"])
    s = PX_PER_UNIT * size * c["scale"]
    offset = np.array([size / 2 + c["tx"] * size, size / 2 + c["ty"] * size])
    return s * rot[:2], offset


def project(points3d: np.ndarray, controls: Mapping[str, float] | None, size: int) -> np.ndarray:
    """Image pixel coordinates (N,2) of canonical points after the head pose in `controls`."""
    m, off = camera(controls, size)
    return (np.asarray(points3d, dtype=np.float64) - PIVOT) @ m.T + off


def neutral_pose(controls: Mapping[str, float] | None) -> ResolvedControls:
    """The same controls with the rigid pose reset (yaw=pitch=roll=tx=ty=0, scale=1)."""
    c = ResolvedControls(resolve_controls(controls))
    c.update(yaw=0.0, pitch=0.0, roll=0.0, tx=0.0, ty=0.0, scale=1.0)
    return c


def light_vector(ident: Identity) -> np.ndarray:
    """Unit vector toward the key light in the world frame (y down, z toward the camera)."""
    az, el = np.radians(ident.light_azimuth), np.radians(ident.light_elevation)
    return np.array([np.sin(az) * np.cos(el), -np.sin(el), np.cos(az) * np.cos(el)])
