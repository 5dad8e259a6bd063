"""Face renderer of the built-in synthetic corpus: public API and each actor's canonical head texture.

    identity = sample_identity(np.random.default_rng(7))
    r = render_frame(identity, {"jaw_open": 0.6, "mouth_corner": 0.8, "yaw": 10}, size=128)
    r.image (H,W,3) uint8 RGB, r.landmarks (68,2) px, r.landmarks_frontal (68,2) px

The head is a height field over the frontal plane (`face_model.head_height`) carrying canonical maps
(albedo, alpha, surface slope, ambient occlusion, cast shadow, hair strand direction, gloss) and
expression detail maps (smile folds, crow's feet, nose wrinkles, brow furrow, forehead lines, frown).
An expression moves landmarks; a smooth displacement field interpolates their motion over the skin.
Built once per (identity, size) and cached; a frame then costs a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from pipeline.corpus import face_render as fr
from pipeline.corpus.face_model import (
    NEUTRAL,
    PX_PER_UNIT,
    Identity,
    ResolvedControls,
    chin_y,
    face_points,
    head_height,
    landmarks_3d,
    light_vector,
    neutral_pose,
    outline_halfwidth,
    project,
    resolve_controls,
    sample_identity,
)

__all__ = ["Identity", "Rendered", "sample_identity", "landmarks_3d", "project", "render_frame", "HeadTexture"]

# landmarks and auxiliary points whose motion drives the skin (upper lids and inner lips excluded:
# the drawn eye and mouth cover them, and their near-coincident pairs would make the fit ill-posed)
DRIVER_LANDMARKS = np.array(list(range(0, 36)) + [36, 39, 42, 45, 40, 41, 46, 47] + list(range(48, 60)))
DRIVER_AUX = np.array([0, 1, 2, 3, 4, 12, 13, 14])
DISP_STEP = 0.1       # spacing of the displacement grid
CAST_SLOPE = 1.35     # max slope of the ray-cast height: one hit per pixel for view tilts below ~36 degrees
EXPRESSION_MAPS = ("smile", "cheek", "wrinkle", "furrow", "forehead", "frown")


@dataclass
class HeadTexture:
    """Canonical maps of one actor at one output size (see module doc); texel (U, V) is the point
    (x0 + U / rho, y0 + V / rho)."""

    x0: float
    y0: float
    rho: float
    px_unit: float
    chin: float
    geo: np.ndarray          # (h, w, 3): slope-limited height (see _slope_limited), dH/dU, dH/dV for the ray cast
    attr: np.ndarray         # (h, w, 13): albedo rgb, alpha, dH/dx, dH/dy, ao, shadow, hair, tangent xyz, gloss
    expression: np.ndarray   # (6, eh, ew, 3): per EXPRESSION_MAPS slope x, slope y, crease darkening
    expression_origin: tuple[int, int]  # texel (col, row) of expression[:, 0, 0]
    disp_weights: np.ndarray  # (nodes, drivers) linear map from driver motion to grid displacement
    disp_shape: tuple[int, int]
    disp_origin: tuple[float, float]
    driver_rest: np.ndarray  # (drivers, 3) neutral driver positions (anchors last, never moving)
    _grids: dict = field(default_factory=dict)

    @property
    def disp_scale(self) -> float:
        return 1.0 / (self.rho * DISP_STEP)

    @property
    def disp_offset(self) -> tuple[float, float]:
        return ((self.x0 - self.disp_origin[0]) / DISP_STEP, (self.y0 - self.disp_origin[1]) / DISP_STEP)

    def pixel_grid(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Centres (rows, cols) of the half-resolution pixels of a size x size frame, in full-resolution
        pixel coordinates (the grid the ray cast is solved on), cached."""
        if size not in self._grids:
            half = size // 2
            q = (np.arange(half, dtype=np.float32) + 0.5) * (size / half) - 0.5
            qx, qy = np.meshgrid(q, q)
            self._grids[size] = (qy, qx)
        return self._grids[size]

    def displacement(self, lm3: np.ndarray, aux3: np.ndarray) -> np.ndarray:
        """(gh, gw, 3) float32 displacement of the skin for the current driver positions."""
        now = np.concatenate([lm3[DRIVER_LANDMARKS], aux3[DRIVER_AUX]])
        delta = np.zeros_like(self.driver_rest)
        delta[: len(now)] = now - self.driver_rest[: len(now)]
        d = fr.fixed_order_matmul(self.disp_weights, delta.astype(np.float32))
        return d.reshape(*self.disp_shape, 3)

    def detail(self, c: Mapping[str, float], u: np.ndarray, v: np.ndarray, face_box: tuple[slice, slice]
               ) -> np.ndarray | None:
        """Blend of the expression detail maps for the controls, sampled at texels (u, v) inside the
        image box `face_box` (zero elsewhere); None when every weight is ~0.

        The maps only cover the face (expression_origin), and sampling only the face's pixels keeps
        cv2.remap off its slow out-of-range path."""
        active = [(k, x) for k, x in enumerate(expression_weights(c)) if x > 0.02]
        if not active:
            return None
        blend = self.expression[active[0][0]] * np.float32(active[0][1])
        for k, x in active[1:]:
            blend += self.expression[k] * np.float32(x)  # not cv2.scaleAdd: its SIMD build fuses (FMA) or not by CPU
        ox, oy = self.expression_origin
        h, w_ = blend.shape[:2]
        # clamp into the map (its rim is zero): in-range coordinates keep remap on its fast path
        uu = np.minimum(np.maximum(u[face_box] - ox, 0.0), w_ - 1.0)
        vv = np.minimum(np.maximum(v[face_box] - oy, 0.0), h - 1.0)
        out = np.zeros(u.shape + (3,), np.float32)
        out[face_box] = cv2.remap(blend, uu, vv, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return out


def expression_weights(c: Mapping[str, float]) -> tuple[float, ...]:
    """Weights of EXPRESSION_MAPS for the controls."""
    clip = lambda v: min(max(float(v), 0.0), 1.2)  # noqa: E731
    return (
        clip(c["mouth_corner"] + 0.4 * c["lip_spread"] + 0.3 * c["smirk"]),
        clip(c["cheek_raise"]),
        clip(c["nose_wrinkle"] + 0.4 * c["upper_lip_raise"]),
        clip(c["brow_furrow"]),
        clip(c["brow_raise"] + 0.6 * c["brow_inner_up"]),
        clip(-c["mouth_corner"] + 0.3 * c["lip_closure"]),
    )


# ----------------------------------------------------------------------------- texture building helpers

class _Canvas:
    """Rasterises canonical-unit shapes onto the texture grid."""

    def __init__(self, x0: float, y0: float, rho: float, shape: tuple[int, int]):
        self.x0, self.y0, self.rho, self.shape = x0, y0, rho, shape

    def fixed(self, pts: np.ndarray) -> np.ndarray:
        px = (np.asarray(pts)[:, :2] - (self.x0, self.y0)) * self.rho
        return np.round(px * fr.ONE).astype(np.int32)

    def fill(self, polys: list[np.ndarray]) -> np.ndarray:
        """Union of filled polygons (one fillPoly each: a joint call would XOR their overlaps)."""
        out = np.zeros(self.shape, np.float32)
        for p in polys:
            m = np.zeros(self.shape, np.uint8)
            cv2.fillPoly(m, [self.fixed(p)], 255, cv2.LINE_AA, fr.SHIFT)
            out = np.maximum(out, m.astype(np.float32) / 255)
        return out

    def groove(self, curves: list[np.ndarray], width: float, depth: float) -> np.ndarray:
        """Height map of soft grooves (depth < 0) or ridges along polylines, `width` = Gaussian sigma."""
        m = np.zeros(self.shape, np.float32)
        cv2.polylines(m, [self.fixed(fr.spline(c, False, 8)) for c in curves], False, 1.0, 1, cv2.LINE_8, fr.SHIFT)
        sigma = max(width * self.rho, 0.6)
        m = cv2.GaussianBlur(m, (0, 0), sigma)
        return m * (depth * sigma * np.sqrt(2 * np.pi))


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed by sigma texels."""
    n = rng.standard_normal(shape).astype(np.float32)
    if sigma > 0.3:
        n = cv2.GaussianBlur(n, (0, 0), sigma)
    return n / (n.std() + 1e-6)


def _gauss(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2)).astype(np.float32)


def _slopes(h: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """dh/dx, dh/dy in canonical units of a texture-sampled height."""
    gy, gx = np.gradient(h)
    return (gx * rho).astype(np.float32), (gy * rho).astype(np.float32)


def _hair_shapes(ident: Identity) -> tuple[list[np.ndarray], list[np.ndarray], float, tuple[float, float]]:
    """Hair as (outer polygons, polygons cut out of it where skin shows, thickness, strand origin)."""
    ey, fw, vol = ident.eye_y, ident.face_width, ident.hair_volume
    top = ey - ident.crown_height
    style = ident.hair_style
    margin_top = {"short": 0.16, "side_part": 0.24, "bob": 0.26, "long": 0.24, "curly": 0.42, "bun": 0.06,
                  "buzz": 0.025}[style] * vol
    margin_side = {"short": 0.07, "side_part": 0.1, "bob": 0.2, "long": 0.2, "curly": 0.38, "bun": 0.04,
                   "buzz": 0.02}[style] * vol
    bottom = {"short": ey - 0.08, "side_part": ey - 0.02, "bob": ident.mouth_y + 0.12, "long": 2.7,
              "curly": ey + 0.3, "bun": ey - 0.12, "buzz": ey - 0.1}[style]
    # outer helmet: the skull outline grown by the margins, bumpy for curls
    t = np.linspace(-np.pi, 0, 60)
    cy = ey - 0.55
    ax, ay = 1.04 * fw + margin_side, cy - top + margin_top
    r = 1 + (0.035 * np.sin(11 * t + ident.texture_seed % 7) if style == "curly" else 0)
    helmet = np.stack([ax * np.cos(t) * r, cy + ay * np.sin(t) * r], axis=1)
    helmet = np.concatenate([[[-ax, bottom]], helmet, [[ax, bottom]]])
    outer = [helmet]
    if style in ("bob", "long"):
        flare = 0.08 if style == "bob" else 0.18
        outer.append(np.array([[-ax, cy], [ax, cy], [ax + flare, bottom], [-ax - flare, bottom]]))
    if style in ("short", "side_part", "buzz"):  # sideburns in front of the ears
        for s in (-1, 1):
            outer.append(np.array([[s * (fw * 0.84), ey - 0.3], [s * (fw * 1.0), ey - 0.3],
                                   [s * (fw * 0.99), ey + 0.2], [s * (fw * 0.9), ey + 0.18]]))
    if style == "bun":
        outer.append(fr.ellipse_points(np.array([0.0, top - 0.18]), (0.33, 0.29), 0.0, 32))
    # the face: skin below a hairline; a fringe lowers it
    hl = ey - 0.93 + 0.06 * (ident.crown_height - 1.85)
    if ident.fringe > 0:
        hl = ey - 0.88 + 0.42 * ident.fringe
    xs = np.linspace(-0.86 * fw, 0.86 * fw, 25)
    recess = 0.1 if style in ("short", "buzz", "bun") else 0.04
    hy = hl - recess * np.abs(xs / (0.86 * fw)) ** 3 + 0.06 * (xs / (0.86 * fw)) ** 2
    if ident.fringe > 0:  # strand tips: a gentle zig-zag and a sweep toward the parting side
        hy = hy + 0.025 * np.cos(xs * 38) - 0.08 * ident.fringe * np.clip(ident.hair_part * xs, -1, 1)
    if style == "side_part":
        hy = hy - 0.1 * np.exp(-((xs - 0.5 * ident.hair_part) / 0.25) ** 2)
    side_drop = ey + (0.3 if style in ("bob", "long") else 0.1)
    inset = 0.07 if style in ("bob", "long") else 0.0
    cut = np.concatenate([[[-(fw - inset), 3.0], [-(fw - inset), side_drop], [-0.93 * fw, ey - 0.45]],
                          np.stack([xs, hy], axis=1),
                          [[0.93 * fw, ey - 0.45], [fw - inset, side_drop], [fw - inset, 3.0]]])
    if style in ("bob", "long"):  # hair falls beside the face down to the jaw, hiding its sides
        jaw = np.linspace(side_drop, chin_y(ident) + 0.05, 12)
        w = outline_halfwidth(ident, np.minimum(jaw, chin_y(ident) - 0.01)) - 0.06
        cut = np.concatenate([cut[:1], np.stack([-w[::-1], jaw[::-1]], axis=1), cut[1:-1],
                              np.stack([w, jaw], axis=1), cut[-1:]])
        neck = 0.6 * fw  # long hair falls behind the neck, not in front of it
        cut = np.concatenate([[[-neck, 3.0], [-neck, chin_y(ident) - 0.3]], cut[1:-1],
                              [[neck, chin_y(ident) - 0.3], [neck, 3.0]]])
    thickness = {"short": 0.1, "side_part": 0.14, "bob": 0.2, "long": 0.2, "curly": 0.34, "bun": 0.05,
                 "buzz": 0.015}[style] * vol
    origin = (0.3 * ident.hair_part, top - 0.05) if style != "bun" else (0.0, top - 0.18)
    return outer, [cut], thickness, origin


def _slope_limited(height: np.ndarray, rho: float, slope: float) -> np.ndarray:
    """Smallest height field >= `height` whose slope never exceeds `slope` (the upper cone envelope).

    Cliffs (face edge over the hair behind it, nose sides) get a skirt on their low side, so for any
    pose whose tilt keeps tan(angle) * slope < 1 each pixel sees exactly one surface point and the
    Newton steps of the ray cast converge. Peaks and the face front are left untouched.
    """
    out = height.copy()
    step, diag = slope / rho, slope * np.sqrt(2) / rho
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    corners = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 1]], np.uint8)
    for _ in range(int(np.ceil(float(height.max()) * rho / slope)) + 1):
        nxt = np.maximum(out, np.maximum(cv2.dilate(out, cross) - step, cv2.dilate(out, corners) - diag))
        if np.array_equal(nxt, out):
            break
        out = nxt
    return out


def _shadow_map(height: np.ndarray, light: np.ndarray, rho: float) -> np.ndarray:
    """Soft cast shadows of the height field for a light in the head frame (1 = lit)."""
    lxy = np.hypot(light[0], light[1])
    if lxy < 1e-3:
        return np.ones_like(height)
    dx, dy, rise = float(light[0] / lxy), float(light[1] / lxy), float(light[2] / lxy)
    hh, ww = height.shape
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
    block = np.zeros_like(height)
    for k in range(1, 17):
        t = 0.035 * k
        hs = cv2.remap(height, xx + dx * t * rho, yy + dy * t * rho, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
        block = np.maximum(block, np.clip((hs - height - rise * t - 0.01) / 0.04, 0, 1))
    return cv2.GaussianBlur(1 - block, (0, 0), max(0.02 * rho, 0.6))


# ----------------------------------------------------------------------------- the texture

def _head_maps(ident: Identity, x: np.ndarray, y: np.ndarray, cv: _Canvas, rng: np.random.Generator):
    """Skin albedo, height, alpha and gloss of the bare head with ears (before hair)."""
    ey, yc = ident.eye_y, chin_y(ident)
    top = ey - ident.crown_height
    ys = np.linspace(top, yc, 120)
    w = outline_halfwidth(ident, ys)
    outline = np.concatenate([np.stack([w, ys], 1), np.stack([-w[::-1], ys[::-1]], 1)])
    head_alpha = cv.fill([outline])
    height = head_height(ident, x, y).astype(np.float32)
    # ears: an outward-tilted oval beside the head, lying almost flat against it
    es = ident.ear_size
    ear_alpha = np.zeros_like(head_alpha)
    ear_h = np.zeros_like(height)
    ear_inner = np.zeros_like(height)
    for s in (-1, 1):
        ecy = ey + 0.19 * es
        wx = float(outline_halfwidth(ident, np.array([ecy]))[0])
        centre = np.array([s * (wx + 0.035 * es), ecy])
        poly = fr.ellipse_points(centre, (0.115 * es, 0.27 * es), s * 0.12, 28)
        a = cv.fill([poly])
        ear_alpha = np.maximum(ear_alpha, a)
        d = _gauss(x, y, centre[0], centre[1], 0.09 * es, 0.22 * es)
        ear_h = np.maximum(ear_h, 0.12 * d * a)
        ear_inner = np.maximum(ear_inner, _gauss(x, y, centre[0] - s * 0.01, centre[1] + 0.03, 0.05 * es, 0.13 * es))
    ear_only = ear_alpha * (1 - head_alpha)
    height = height * head_alpha + ear_h * ear_only
    alpha = np.maximum(head_alpha, ear_alpha)

    skin = np.array(ident.skin, np.float32)
    mottle = _noise(rng, x.shape, 0.12 * cv.rho)
    pores = _noise(rng, x.shape, 0.5)
    albedo = skin * (1 + mottle[..., None] * np.array([0.035, 0.045, 0.045], np.float32)
                     + pores[..., None] * 0.022)
    my, ny, ex = ident.mouth_y * ident.face_length, ey + ident.nose_length, ident.eye_spacing
    redden = np.array([1.04, 0.8, 0.78], np.float32)
    cheeks = ident.blush * (_gauss(x, y, -0.5, ey + 0.45, 0.2, 0.15) + _gauss(x, y, 0.5, ey + 0.45, 0.2, 0.15))
    ruddy = cheeks + 0.18 * _gauss(x, y, 0, ny - 0.02, 0.1, 0.08) + 0.25 * ear_only
    albedo = albedo * (1 + (redden - 1) * ruddy[..., None])
    under_eye = sum(_gauss(x, y, s * ex, ey + 0.12, 0.13, 0.045) for s in (-1, 1))
    lids = sum(_gauss(x, y, s * ex, ey - 0.08, 0.14, 0.045) for s in (-1, 1))
    albedo = albedo * (1 - (0.07 * under_eye + 0.05 * lids)[..., None] * np.array([1.0, 1.15, 0.9], np.float32))
    albedo = albedo * (1 - 0.12 * ear_inner * ear_only)[..., None]
    if ident.stubble > 0:
        beard = np.clip((y - (ny + 0.02)) / 0.08, 0, 1) * np.clip((yc + 0.02 - y) / 0.05, 0, 1)
        beard = beard * np.clip(np.abs(x) / 0.05, 0.6, 1)  # a little lighter down the middle
        beard = beard * np.clip(1 - _gauss(x, y, 0, my, 0.5, 0.09) * 1.4, 0, 1)  # none on the lips
        side = np.clip((y - (ey + 0.25)) / 0.15, 0, 1) * np.clip((np.abs(x) - 0.45) / 0.1, 0, 1)
        beard = np.maximum(beard, side * np.clip((y - ey) / 0.2, 0, 1))
        beard = cv2.GaussianBlur(beard.astype(np.float32), (0, 0), 0.03 * cv.rho)
        dots = np.clip(0.75 + 0.25 * _noise(rng, x.shape, 0.5), 0, 1)
        shade = np.array(ident.hair, np.float32) * 0.45 + skin * 0.45
        k = (ident.stubble * 0.4 * beard * dots)[..., None]
        albedo = albedo + (shade - albedo) * k
    if ident.freckles > 0:  # small soft dots over the nose and cheeks
        n = int(60 * ident.freckles)
        centres = np.stack([rng.normal(0, 0.35, n), ey + 0.28 + rng.normal(0, 0.13, n)], 1)
        spots = np.zeros_like(height)
        for centre, strength in zip(centres, rng.uniform(0.4, 1.0, n), strict=True):
            cv2.fillPoly(spots, [cv.fixed(fr.ellipse_points(centre, (0.012, 0.012), 0.0, 8))], float(strength),
                         cv2.LINE_8, fr.SHIFT)
        spots = cv2.GaussianBlur(spots, (0, 0), max(0.006 * cv.rho, 0.5))
        albedo = albedo * (1 - 0.25 * spots[..., None] * np.array([0.7, 1.0, 1.2], np.float32))
    tzone = _gauss(x, y, 0, ey - 0.6, 0.45, 0.3) + _gauss(x, y, 0, ey + 0.35, 0.09, 0.3)
    gloss = (0.09 + 0.06 * np.clip(tzone, 0, 1)).astype(np.float32)
    return albedo.astype(np.float32), height, alpha, gloss, head_alpha


def _hair_maps(ident: Identity, x: np.ndarray, y: np.ndarray, cv: _Canvas, rng: np.random.Generator,
               head_h: np.ndarray):
    """Hair alpha, height, albedo, strand tangent and sheen strength."""
    outer, cuts, thickness, (ox, oy) = _hair_shapes(ident)
    hard = np.clip(cv.fill(outer) - cv.fill(cuts), 0, 1)
    dx, dy = x - ox, y - oy
    r = np.sqrt(dx * dx + dy * dy) + 1e-6
    tx, ty = (dx / r).astype(np.float32), (dy / r).astype(np.float32)
    # strands: 1-D noise across the strand direction (angle around the origin), a few octaves
    ang = np.arctan2(dx, dy)
    table = rng.standard_normal(4096).astype(np.float32)
    table = np.convolve(np.tile(table, 2), np.ones(3) / 3, mode="same")[:4096]

    def stripes(freq: float) -> np.ndarray:
        pos = (ang * freq) % 4096
        i = pos.astype(np.int32)
        f = pos - i
        return table[i] * (1 - f) + table[(i + 1) % 4096] * f

    k = cv.rho / 2.2
    strand = 0.55 * stripes(k) + 0.35 * stripes(k / 4.3) + 0.25 * stripes(k / 13.7)
    strand = strand + 0.25 * _noise(rng, x.shape, 0.08 * cv.rho)  # clumps along the length
    if ident.hair_style == "curly":
        curls = _noise(rng, x.shape, 0.018 * cv.rho)
        strand = 0.4 * strand + 1.0 * curls
        tx, ty = np.cos(curls * 3).astype(np.float32), np.sin(curls * 3).astype(np.float32)
    strand = np.clip(0.5 + 0.28 * strand, 0, 1).astype(np.float32)
    soft = cv2.GaussianBlur(hard, (0, 0), max(0.03 * cv.rho, 0.7))
    alpha = np.clip((soft - 0.5) * 2.0 + 0.5 + 1.2 * (strand - 0.5) * (1 - np.abs(2 * soft - 1)), 0, 1)
    if ident.hair_style == "buzz":
        alpha = alpha * (0.7 + 0.3 * strand)
    dist = cv2.distanceTransform((hard > 0.5).astype(np.uint8), cv2.DIST_L2, 5) / cv.rho
    dome = np.sqrt(np.clip(dist / 0.3, 0, 1))
    height = (np.maximum(head_h, 0) + thickness * dome + 0.012 * strand).astype(np.float32)
    if ident.hair_style == "bun":
        height = height + 0.25 * _gauss(x, y, 0, ident.eye_y - ident.crown_height - 0.18, 0.22, 0.2) * alpha
    hair = np.array(ident.hair, np.float32)
    albedo = hair * (0.55 + 0.8 * strand)[..., None] * (0.8 + 0.2 * dome)[..., None]
    return alpha.astype(np.float32), height, albedo.astype(np.float32), tx, ty, (0.6 + 0.8 * strand).astype(np.float32)


def _expression_maps(ident: Identity, x: np.ndarray, y: np.ndarray, cv: _Canvas, rng: np.random.Generator,
                     alpha: np.ndarray) -> np.ndarray:
    """(6, h, w, 3) slope-x, slope-y and crease darkening of each expression detail map."""
    ey, ex, nw = ident.eye_y, ident.eye_spacing, ident.nose_width
    ny, my, hw = ey + ident.nose_length, ident.mouth_y * ident.face_length, ident.mouth_halfwidth
    corner_x = ex + ident.eye_width / 2
    maps = []
    g = cv.groove
    # smile: nasolabial folds with the cheek bulging above them
    smile = sum(g([np.array([[s * (nw + 0.03), ny - 0.02], [s * (nw + 0.12), ny + 0.12],
                             [s * (hw + 0.07), my + 0.02], [s * (hw + 0.05), my + 0.16]])], 0.025, -0.045)
                + 0.06 * _gauss(x, y, s * 0.45, ey + 0.46, 0.15, 0.12) for s in (-1, 1))
    maps.append(smile)
    # cheek raise: puffed lower lids, a lid crease, crow's feet, round cheeks
    cheek = np.zeros_like(x, dtype=np.float32)
    for s in (-1, 1):
        cheek += 0.035 * _gauss(x, y, s * ex, ey + 0.14, 0.12, 0.035)
        cheek += g([np.array([[s * (ex - 0.12), ey + 0.1], [s * ex, ey + 0.125], [s * (ex + 0.14), ey + 0.09]])],
                   0.012, -0.012)
        feet = [np.array([[s * (corner_x + 0.03), ey + k * 0.03], [s * (corner_x + 0.1), ey + k * 0.07],
                          [s * (corner_x + 0.15), ey + k * 0.1]]) for k in (-1, 0, 1)]
        cheek += g(feet, 0.01, -0.012)
        cheek += 0.05 * _gauss(x, y, s * 0.45, ey + 0.42, 0.15, 0.12)
    maps.append(cheek)
    # nose wrinkle: creases across the bridge and "bunny lines" down its sides
    bridge = [np.array([[-0.09, ey + k], [0.0, ey + k - 0.01], [0.09, ey + k]]) for k in (0.03, 0.08, 0.13)]
    bunny = [np.array([[s * 0.07, ey + 0.16], [s * 0.13, ey + 0.09], [s * 0.2, ey + 0.03]]) for s in (-1, 1)]
    maps.append(g(bridge, 0.012, -0.014) + g(bunny, 0.015, -0.016))
    # brow furrow: vertical lines between the brows over a small bulge, a crease at the nose root
    lines = [np.array([[s * 0.06, ey - 0.36], [s * 0.055, ey - 0.26], [s * 0.065, ey - 0.15]]) for s in (-1, 1)]
    maps.append(g(lines, 0.013, -0.022) + 0.02 * _gauss(x, y, 0, ey - 0.13, 0.08, 0.05)
                + g([np.array([[-0.08, ey - 0.08], [0, ey - 0.07], [0.08, ey - 0.08]])], 0.01, -0.01))
    # forehead lines: three wavy horizontal creases
    fl = [np.stack([np.linspace(-0.6, 0.6, 9), ey - 0.63 - 0.11 * k + 0.018 * np.sin(np.linspace(0, 7, 9) + k)
                    + 0.05 * np.linspace(-1, 1, 9) ** 2], 1) for k in range(3)]
    maps.append(g(fl, 0.014, -0.016))
    # frown: lines down from the mouth corners and a dimpled chin
    frown = sum(g([np.array([[s * (hw + 0.02), my + 0.02], [s * (hw + 0.05), my + 0.12],
                             [s * (hw + 0.07), my + 0.24]])], 0.02, -0.025) for s in (-1, 1))
    frown = frown + 0.012 * _noise(rng, x.shape, 0.02 * cv.rho) * _gauss(x, y, 0, chin_y(ident) - 0.15, 0.14, 0.08)
    maps.append(frown)
    out = np.zeros((len(maps),) + x.shape + (3,), np.float32)
    for k, h in enumerate(maps):
        h = h.astype(np.float32) * alpha
        out[k, ..., 0], out[k, ..., 1] = _slopes(h, cv.rho)
        out[k, ..., 2] = np.clip(-h * 6.0, 0, 0.5)
    return out


def _tps_kernel(d2: np.ndarray) -> np.ndarray:
    """Thin-plate spline radial function r^2 log r, written on squared distances."""
    return 0.5 * d2 * np.log(np.maximum(d2, 1e-12))


def _displacement_weights(ident: Identity, x0: float, y0: float, x1: float, y1: float):
    """Linear map from driver-point motion to the displacement grid (a thin-plate spline).

    The spline interpolates the drivers exactly (the jaw outline in the texture follows the jaw
    landmarks) with the least bending, so it neither rings nor folds between close drivers; fixed
    anchors around the face keep hair, ears and forehead still.
    """
    lm, aux = face_points(ident, NEUTRAL)
    drivers = np.concatenate([lm[DRIVER_LANDMARKS], aux[DRIVER_AUX]])
    ey, yc = ident.eye_y, chin_y(ident)
    anchors = [(x, ey - 0.95) for x in (-0.8, -0.4, 0.0, 0.4, 0.8)]
    anchors += [(s * 1.05, ey - 0.45) for s in (-1, 1)] + [(s * 1.15, ey + 0.25) for s in (-1, 1)]
    anchors += [(s * 1.25, 0.95) for s in (-1, 1)] + [(s * 1.1, yc + 0.5) for s in (-1, 1)]
    anchors += [(0.0, ey - 1.6), (-1.5, ey - 1.1), (1.5, ey - 1.1), (-1.6, 2.0), (1.6, 2.0), (0.0, 2.8)]
    pts = np.concatenate([drivers[:, :2], np.array(anchors)])
    rest = np.concatenate([drivers, np.concatenate([np.array(anchors), np.zeros((len(anchors), 1))], 1)])
    n = len(pts)
    affine = np.concatenate([np.ones((n, 1)), pts], 1)
    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = _tps_kernel(((pts[:, None] - pts[None]) ** 2).sum(-1))
    system[:n, n:] = affine
    system[n:, :n] = affine.T
    gx = np.arange(x0, x1 + DISP_STEP, DISP_STEP)
    gy = np.arange(y0, y1 + DISP_STEP, DISP_STEP)
    nodes = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)
    basis = np.concatenate([_tps_kernel(((nodes[:, None] - pts[None]) ** 2).sum(-1)),
                            np.ones((len(nodes), 1)), nodes], 1)
    weights = basis @ np.linalg.inv(system)[:, :n]
    return weights.astype(np.float32), (len(gy), len(gx)), rest


def build_texture(ident: Identity, size: int) -> HeadTexture:
    """Every canonical map of one actor for frames of `size` pixels."""
    px_unit = PX_PER_UNIT * size
    rho = max(28.0, 1.2 * px_unit)
    x0, x1 = -1.95, 1.95
    y0, y1 = ident.eye_y - ident.crown_height - 0.55, 2.9
    w, h = int(np.ceil((x1 - x0) * rho)) + 1, int(np.ceil((y1 - y0) * rho)) + 1
    x = (x0 + np.arange(w) / rho)[None, :].repeat(h, 0)
    y = (y0 + np.arange(h) / rho)[:, None].repeat(w, 1)
    cv = _Canvas(x0, y0, rho, (h, w))
    rng = np.random.default_rng(ident.texture_seed)

    skin_albedo, head_h, head_alpha, gloss, face_alpha = _head_maps(ident, x, y, cv, rng)
    hair_alpha, hair_h, hair_albedo, tx, ty, sheen = _hair_maps(ident, x, y, cv, rng, head_h)
    ha = hair_alpha[..., None]
    albedo = skin_albedo + (hair_albedo - skin_albedo) * ha
    alpha = np.maximum(head_alpha, hair_alpha)
    height = head_h + (hair_h - head_h) * hair_alpha
    height = cv2.GaussianBlur(height, (0, 0), 0.6)
    sx, sy = _slopes(height, rho)
    # ambient occlusion from concavity at two scales, and skin darkened just under the hair
    cav = (cv2.GaussianBlur(height, (0, 0), 0.06 * rho) - height) * 2.2 \
        + (cv2.GaussianBlur(height, (0, 0), 0.2 * rho) - height) * 0.8
    ao = np.clip(1 - cav, 0.35, 1)
    under_hair = np.clip(cv2.GaussianBlur(hair_alpha, (0, 0), 0.05 * rho) - hair_alpha, 0, 1)
    ao = ao * (1 - 0.5 * under_hair)
    shadow = _shadow_map(height, light_vector(ident), rho)
    gloss = gloss * (1 - hair_alpha) + sheen * hair_alpha
    # strand tangents follow the surface: the slope lifts them out of the frontal plane
    tz = tx * sx + ty * sy
    tn = hair_alpha / np.sqrt(tx * tx + ty * ty + tz * tz + 1e-9)
    attr = np.stack([albedo[..., 0], albedo[..., 1], albedo[..., 2], alpha, sx, sy, ao, shadow, hair_alpha,
                     tx * tn, ty * tn, tz * tn, gloss], axis=-1).astype(np.float32)
    cast = _slope_limited(height, rho, CAST_SLOPE)
    cx, cy = _slopes(cast, rho)
    geo = np.stack([cast, cx / rho, cy / rho], -1).astype(np.float32)
    expression = _expression_maps(ident, x, y, cv, rng, face_alpha * (1 - hair_alpha))
    # keep only the box where any map is non-zero (the face), so blending them per frame is cheap
    used = np.abs(expression).max(axis=(0, 3)) > 1e-4
    rows, cols = np.flatnonzero(used.any(1)), np.flatnonzero(used.any(0))
    r0, r1, c0, c1 = max(rows[0] - 2, 0), rows[-1] + 3, max(cols[0] - 2, 0), cols[-1] + 3  # zero rim kept
    expression = np.ascontiguousarray(expression[:, r0:r1, c0:c1])
    weights, shape, rest = _displacement_weights(ident, x0, y0, x1, y1)
    return HeadTexture(x0=x0, y0=y0, rho=rho, px_unit=px_unit, chin=chin_y(ident), geo=geo, attr=attr,
                       expression=expression, expression_origin=(int(c0), int(r0)), disp_weights=weights,
                       disp_shape=shape, disp_origin=(x0, y0),
                       driver_rest=rest.astype(np.float32))


@lru_cache(maxsize=8)
def head_texture(ident: Identity, size: int) -> HeadTexture:
    """Cached `build_texture` (a corpus renders many frames per actor; ~4 MB each at 128 px)."""
    return build_texture(ident, size)


# ----------------------------------------------------------------------------- public API

@dataclass(frozen=True)
class Rendered:
    """One frame: RGB image, the 68 landmarks used to draw it, and the same face with neutral pose."""

    image: np.ndarray              # (H, W, 3) uint8 RGB
    landmarks: np.ndarray          # (68, 2) float32 image px
    landmarks_frontal: np.ndarray  # (68, 2) float32 image px, pose controls reset
    skin_hair_mask: np.ndarray | None = None  # (H, W) float32 coverage of the person's skin and hair (head, neck)


def render_frame(identity: Identity, controls: Mapping[str, float] | None = None, size: int = 128) -> Rendered:
    """Draw one frame of `identity` under `controls` (missing controls default to controls.NEUTRAL).

    Expression controls are clamped to face_model.CONTROL_RANGES; pose is used as given (yaw and pitch
    up to about 25 degrees, roll up to about 15, look right). Raises ValueError for an unknown
    control name, a non-finite value or a size outside 32..2048.
    """
    if not isinstance(size, (int, np.integer)) or not 32 <= size <= 2048:
        raise ValueError(f"size must be an integer in 32..2048, got {size!r}")
    with fr.portable_opencv():
        return _render_frame(identity, resolve_controls(controls), int(size))


def _render_frame(identity: Identity, c: ResolvedControls, size: int) -> Rendered:
    tex = head_texture(identity, size)
    lm3, aux3 = face_points(identity, c)
    lm = project(lm3, c, size)
    aux = project(aux3, c, size)
    frontal = project(lm3, neutral_pose(c), size)

    img = fr.background(identity, size).copy()
    neck = fr.draw_body(img, identity, tex.chin, c, size)
    disp = fr.displacement_with_slopes(tex.displacement(lm3, aux3))
    u, v = fr.cast_head(tex, disp, c, size)
    attr = cv2.remap(tex.attr, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    pad = 0.3 * tex.px_unit
    lo = np.maximum(np.floor(lm.min(0) - pad), 0).astype(int)
    hi = np.minimum(np.ceil(lm.max(0) + pad), size).astype(int)
    detail = tex.detail(c, u, v, (slice(lo[1], hi[1]), slice(lo[0], hi[0])))
    fr.paint_features(attr, identity, lm, aux, c, size)
    colour = fr.shade_head(identity, attr, detail, c)
    alpha = np.ascontiguousarray(attr[..., fr.A_ALPHA])
    img = cv2.blendLinear(colour, img, alpha, 1.0 - alpha)
    image = cv2.convertScaleAbs(img, alpha=255.0)  # rounds and saturates to uint8
    return Rendered(image=image, landmarks=lm.astype(np.float32), landmarks_frontal=frontal.astype(np.float32),
                    skin_hair_mask=np.maximum(alpha, neck))
