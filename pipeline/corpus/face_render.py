"""Per-frame rasterisation of the synthetic face (numpy + OpenCV, one core).

A frame is drawn in four passes:
1. background gradient, neck and shoulders (image space);
2. the head: every pixel is ray-cast into the canonical height field of `face.HeadTexture`
   (a few Newton steps of the weak-perspective projection, the expression's smooth displacement
   field included), then the canonical maps are sampled with `cv2.remap`;
3. features drawn in image space at the projected landmarks (brows, eyes, lips, mouth interior,
   nostrils) into the albedo, so the same lighting shades them;
4. shading: wrap-lit diffuse with a warmer terminator for skin, ambient occlusion, a cast-shadow map,
   Blinn specular for skin and lips, Kajiya-Kay sheen for hair.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pipeline.corpus.face_model import (
    PIVOT,
    Identity,
    ResolvedControls,
    camera,
    light_vector,
    resolve_controls,
    rotation,
)

if TYPE_CHECKING:  # the texture lives with the public API in face.py, which imports this module
    from pipeline.corpus.face import HeadTexture


@contextlib.contextmanager
def portable_opencv() -> Iterator[None]:
    """OpenCV without IPP and on one thread, so a frame has the same bytes on every x86 CPU with AVX2.

    IPP picks its AVX2 or AVX-512 code by CPU and the two round differently (up to 4 levels in a few
    hundred pixels of the tiny corpus); its on/off switch is per thread, hence one thread.
    """
    threads, ipp = cv2.getNumThreads(), cv2.ipp.useIPP()
    cv2.setNumThreads(1)
    cv2.ipp.setUseIPP(False)
    try:
        yield
    finally:
        cv2.ipp.setUseIPP(ipp)
        cv2.setNumThreads(threads)


def fixed_order_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x (N, K) @ w (K, M), summed term by term in K order: a BLAS product's rounding depends on the
    kernel OpenBLAS picks for the CPU (Haswell, SkylakeX, ...), a plain multiply-then-add does not."""
    out = x[:, 0:1] * w[0]
    for k in range(1, w.shape[0]):
        out += x[:, k:k + 1] * w[k]
    return out


# channels of the canonical attribute maps (see face.HeadTexture.attr)
A_ALPHA, A_SLOPE_X, A_SLOPE_Y, A_AO, A_SHADOW, A_HAIR, A_GLOSS = 3, 4, 5, 6, 7, 8, 12
A_TANGENT = slice(9, 12)

SHIFT = 4                      # sub-pixel bits for cv2 drawing
ONE = float(1 << SHIFT)
COARSE_STEPS = 4      # Newton steps of the ray cast on a grid 8x coarser than the frame
FINE_STEPS = 2        # and then at half resolution
IRIS_RADIUS = 0.235   # fraction of the eye width: the lids cover the top and bottom of the iris at rest
IRIS_DROP = 0.004     # iris centre below the line between the eye corners (units)


# ----------------------------------------------------------------------------- small geometry helpers

@lru_cache(maxsize=64)
def _spline_matrix(n: int, closed: bool, per_segment: int) -> np.ndarray:
    """Catmull-Rom weights turning n control points into the sampled curve (one matmul per curve)."""
    eye = np.eye(n)
    if closed:
        ext = np.concatenate([eye[-1:], eye, eye[:2]])
        n_seg = n
    else:
        ext = np.concatenate([2 * eye[:1] - eye[1:2], eye, 2 * eye[-1:] - eye[-2:-1]])
        n_seg = n - 1
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    t2, t3 = t * t, t * t * t
    rows = []
    for i in range(n_seg):
        p0, p1, p2, p3 = ext[i], ext[i + 1], ext[i + 2], ext[i + 3]
        rows.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                           + (-p0 + 3 * p1 - 3 * p2 + p3) * t3))
    if not closed:
        rows.append(eye[-1:])
    return np.concatenate(rows)


def spline(points: np.ndarray, closed: bool, per_segment: int = 6) -> np.ndarray:
    """Catmull-Rom curve through `points` (N,2); passes through every point."""
    p = np.asarray(points, dtype=np.float64)
    return _spline_matrix(len(p), closed, per_segment) @ p


@lru_cache(maxsize=16)
def _unit_circle(n: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def ellipse_points(centre: np.ndarray, axes: tuple[float, float], angle: float, n: int = 16) -> np.ndarray:
    """Polygon (n,2) approximating an ellipse; angle in radians."""
    ca, sa = math.cos(angle), math.sin(angle)
    shape = np.array([[axes[0] * ca, axes[0] * sa], [-axes[1] * sa, axes[1] * ca]])
    return _unit_circle(n) @ shape + np.asarray(centre, dtype=np.float64)


class Roi:
    """A clipped integer box around some points, for drawing masks and blending locally."""

    def __init__(self, pts: np.ndarray, pad: float, shape: tuple[int, int]):
        lo = np.floor(pts.min(axis=0) - pad).astype(int)
        hi = np.ceil(pts.max(axis=0) + pad).astype(int) + 1
        self.x0, self.y0 = max(lo[0], 0), max(lo[1], 0)
        self.x1, self.y1 = min(hi[0], shape[1]), min(hi[1], shape[0])
        self.empty = self.x1 <= self.x0 or self.y1 <= self.y0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def fixed(self, pts: np.ndarray) -> np.ndarray:
        """Points in ROI coordinates as cv2 fixed-point int32 (SHIFT fractional bits)."""
        return np.round((pts - (self.x0, self.y0)) * ONE).astype(np.int32)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates (image frame) of the ROI."""
        ys = np.arange(self.y0, self.y1, dtype=np.float32)
        xs = np.arange(self.x0, self.x1, dtype=np.float32)
        return np.meshgrid(xs, ys)


def poly_mask(roi: Roi, polys: list[np.ndarray]) -> np.ndarray:
    """Anti-aliased coverage (float32 0..1) of filled, non-overlapping polygons inside the ROI (one
    fillPoly call for all: overlaps would cancel out)."""
    m = np.zeros(roi.shape(), np.uint8)
    cv2.fillPoly(m, [roi.fixed(p) for p in polys], 255, cv2.LINE_AA, SHIFT)
    return m.astype(np.float32) * (1 / 255)


def line_mask(roi: Roi, lines: list[np.ndarray], thickness: int) -> np.ndarray:
    """Anti-aliased coverage of open polylines."""
    m = np.zeros(roi.shape(), np.uint8)
    cv2.polylines(m, [roi.fixed(p) for p in lines], False, 255, max(1, thickness), cv2.LINE_AA, SHIFT)
    return m.astype(np.float32) * (1 / 255)


def blend(buf: np.ndarray, roi: Roi, colour, alpha: np.ndarray) -> None:
    """buf[roi] <- mix(buf[roi], colour, alpha); colour is RGB or an (h,w,3) patch."""
    sub = buf[roi.slices]
    sub += (np.asarray(colour, np.float32) - sub) * alpha[..., None]


# ----------------------------------------------------------------------------- background and body

_BACKGROUND_CACHE: dict[tuple[Identity, int], np.ndarray] = {}


def background(ident: Identity, size: int) -> np.ndarray:
    """Two-colour gradient with a soft vignette and a faint light pool behind the head (cached)."""
    key = (ident, size)
    hit = _BACKGROUND_CACHE.get(key)
    if hit is not None:
        return hit
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    ca, sa = np.cos(ident.background_angle), np.sin(ident.background_angle)
    t = np.clip(0.5 + (yy * ca + xx * sa) * 1.2, 0, 1)[..., None]
    top, bottom = np.array(ident.background_top, np.float32), np.array(ident.background_bottom, np.float32)
    img = top + (bottom - top) * t
    lx = -np.sin(np.radians(ident.light_azimuth)) * 0.35
    pool = np.exp(-((xx - lx * 0.6) ** 2 + (yy + 0.15) ** 2) / 0.18)[..., None]
    vignette = (1 - 0.35 * (xx ** 2 + yy ** 2))[..., None]
    img = np.clip(img * vignette * (0.9 + 0.2 * pool), 0, 1).astype(np.float32)
    if len(_BACKGROUND_CACHE) > 64:
        _BACKGROUND_CACHE.clear()
    _BACKGROUND_CACHE[key] = img
    return img


def _body_layer(ident: Identity, chin_y: float, size: int) -> np.ndarray:
    """(h, w, 5) neck and shirt at the neutral pose: premultiplied RGB, body alpha, neck alpha.

    The neck is a shaded cylinder whose top sits hidden inside the head and whose base joins the
    body; the chin shades its top. The shirt has a V neckline and shoulders sloping to the corners.
    """
    m, off = camera(None, size)
    fw = ident.face_width
    shape = (size, size)
    img = np.zeros(shape + (3,), np.float32)
    coverage = np.zeros(shape, np.float32)
    body_alpha = np.zeros(shape, np.float32)
    base = chin_y + 0.45
    head_pts = np.array([[-0.46 * fw, ident.eye_y + 0.2, -0.35], [0.46 * fw, ident.eye_y + 0.2, -0.35],
                         [-0.5 * fw, chin_y - 0.1, -0.25], [0.5 * fw, chin_y - 0.1, -0.25]])
    body_pts = np.array([[0.56 * fw, base, -0.2], [0.7 * fw, base + 0.12, -0.2], [0.0, base + 0.55, -0.1],
                         [-0.7 * fw, base + 0.12, -0.2], [-0.56 * fw, base, -0.2]])
    top = (head_pts - PIVOT) @ m.T + off
    low = (body_pts - PIVOT) @ m.T + off
    neck_poly = np.concatenate([top[[0, 1, 3]], low, top[2:3]])
    light = light_vector(ident)
    skin = np.array(ident.skin, np.float32)
    px = float(np.hypot(m[0, 0], m[1, 0]))

    roi = Roi(neck_poly, 2, shape)
    if not roi.empty:
        alpha = poly_mask(roi, [neck_poly])
        gx, gy = roi.grid()
        centre_x = (low[0, 0] + low[4, 0]) / 2
        s = np.minimum(np.maximum((gx - centre_x) / (0.55 * fw * px), -1.0), 1.0)
        lam = np.maximum(s * float(light[0]) + np.sqrt(1 - s * s) * float(light[2]) + 0.25, 0.0) * (1 / 1.25)
        chin_px = float(((np.array([[0.0, chin_y, 0.5]]) - PIVOT) @ m.T + off)[0, 1])
        under = np.minimum(np.maximum((gy - chin_px) / (0.3 * px), 0.0), 1.0)
        shade = ident.ambient * (0.75 + 0.25 * under) + ident.light_intensity * lam * (0.25 + 0.75 * under * under)
        colour = skin * np.array([0.96, 0.91, 0.89], np.float32) * shade[..., None]
        blend(img, roi, colour, alpha)
        coverage[roi.slices] = alpha
        body_alpha[roi.slices] = alpha

    sh = np.array([[0.56 * fw, base], [0.95, base + 0.1], [1.45, base + 0.28], [1.9, base + 0.6],
                   [2.6, base + 1.1], [2.6, base + 3.0], [-2.6, base + 3.0], [-2.6, base + 1.1],
                   [-1.9, base + 0.6], [-1.45, base + 0.28], [-0.95, base + 0.1], [-0.56 * fw, base],
                   [0.0, base + 0.55]])
    shirt_poly = (np.concatenate([sh, np.full((len(sh), 1), -0.3)], 1) - PIVOT) @ m.T + off
    roi = Roi(shirt_poly, 2, shape)
    if not roi.empty:
        alpha = poly_mask(roi, [shirt_poly])
        gx, gy = roi.grid()
        # the tops of the shoulders face up, the chest faces the camera, each side faces outward
        top_y = float(shirt_poly[0, 1])
        down = np.minimum(np.maximum((gy - top_y) / (0.6 * px), 0.0), 1.0)
        side = (gx - off[0]) / (1.6 * px)
        lam = 0.3 + (1 - down) * float(-light[1]) + down * float(light[2]) + 0.25 * side * float(light[0])
        shirt = np.array(ident.shirt, np.float32)
        colour = shirt * (ident.ambient + 0.55 * ident.light_intensity * np.maximum(lam, 0.1))[..., None]
        blend(img, roi, colour, alpha)
        collar = shirt_poly[[0, 12, 11]]
        band = line_mask(roi, [collar], max(1, int(round(0.05 * px))))
        blend(img, roi, shirt * 0.5, band * 0.8)
        sub = body_alpha[roi.slices]
        np.maximum(sub, alpha, out=sub)
    # premultiplied colour: warping then blends edges correctly
    return np.concatenate([img, body_alpha[..., None], coverage[..., None]], -1).astype(np.float32)


_BODY_CACHE: dict[tuple[Identity, int], np.ndarray] = {}
_IDENTITY_WARP = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def draw_body(img: np.ndarray, ident: Identity, chin_y: float, c: Mapping[str, float], size: int) -> np.ndarray:
    """Neck and shoulders over `img` (float RGB, in place); returns the neck's coverage (h, w).

    The layer is drawn once per actor at the neutral pose and moved with the body, which follows
    the head's translation and scale but turns only a quarter of its yaw and a third of its roll.
    """
    key = (ident, size)
    layer = _BODY_CACHE.get(key)
    if layer is None:
        if len(_BODY_CACHE) > 64:
            _BODY_CACHE.clear()
        layer = _BODY_CACHE[key] = _body_layer(ident, chin_y, size)
    m0, off0 = camera(None, size)
    body = resolve_controls(c).copy()
    body.update(yaw=c["yaw"] * 0.25, pitch=0.0, roll=c["roll"] * 0.3)
    m1, off1 = camera(ResolvedControls(body), size)
    # points of the body plane (z = -0.3) map from the neutral layer to this frame by one affine map
    a = m1[:, :2] @ np.linalg.inv(m0[:, :2])
    z = np.array([0.0, 0.0, -0.3]) - PIVOT
    t = (m1 @ z + off1) - a @ (m0 @ z + off0)
    warp = np.concatenate([a, t[:, None]], 1)
    if np.abs(warp - _IDENTITY_WARP).max() < 1e-4:
        moved = layer
    else:  # replicate the border: the shirt runs on past the frame edges
        moved = cv2.warpAffine(layer, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    cv2.multiply(img, cv2.merge([1.0 - moved[..., 3]] * 3), dst=img)
    img += moved[..., :3]
    return np.ascontiguousarray(moved[..., 4])


# ----------------------------------------------------------------------------- ray casting the head

def displacement_with_slopes(disp: np.ndarray) -> np.ndarray:
    """(gh, gw, 9) float32: the displacement (dx, dy, dz) followed by its derivatives along the two
    grid axes, so the ray cast can use the full Jacobian (the jaw stretches the chin a lot)."""
    out = np.zeros(disp.shape[:2] + (9,), np.float32)
    out[..., :3] = disp
    out[:, 1:-1, 3:6] = (disp[:, 2:] - disp[:, :-2]) * 0.5  # central differences; the rim stays 0
    out[1:-1, :, 6:9] = (disp[2:] - disp[:-2]) * 0.5
    return out


def cast_head(tex: HeadTexture, disp9: np.ndarray, c: Mapping[str, float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Texel coordinates (U, V) of the head surface seen at every pixel (float32 maps for cv2.remap).

    Solves F(U, V) = pixel, where F projects the displaced surface point (x + Dx, y + Dy, H + Dz),
    by Newton steps: several on a grid 8x coarser (cheap, from a flat first guess), a few more at
    half resolution, then bilinear upsampling. The cast height is slope-limited (see
    face._slope_limited), so F is one-to-one for the supported poses and the steps converge.
    """
    m, off = camera(c, size)
    rho = tex.rho
    a = m[:, :2] / rho
    b = m[:, 2]
    cst = off + m @ (np.array([tex.x0, tex.y0, 0.0]) - PIVOT)
    coarse = max(8, size // 8)
    cq = (np.arange(coarse, dtype=np.float32) + 0.5) * (size / coarse) - 0.5
    qx_c, qy_c = np.meshgrid(cq, cq)
    ainv = np.linalg.inv(a)
    h0 = 0.75
    rx, ry = qx_c - float(cst[0] + b[0] * h0), qy_c - float(cst[1] + b[1] * h0)
    u = (float(ainv[0, 0]) * rx + float(ainv[0, 1]) * ry).astype(np.float32)
    v = (float(ainv[1, 0]) * rx + float(ainv[1, 1]) * ry).astype(np.float32)
    solve = _NewtonStep(tex, disp9, m, a, b, cst)
    for _ in range(COARSE_STEPS):
        u, v = solve(u, v, qx_c, qy_c)
    half = size // 2
    u = cv2.resize(u, (half, half), interpolation=cv2.INTER_LINEAR)
    v = cv2.resize(v, (half, half), interpolation=cv2.INTER_LINEAR)
    qy, qx = tex.pixel_grid(size)  # (half-resolution pixel centres in full-resolution coordinates)
    for _ in range(FINE_STEPS):
        u, v = solve(u, v, qx, qy)
    # the map is smooth (one hit per pixel), so bilinear upsampling keeps it sub-pixel accurate
    return (cv2.resize(u, (size, size), interpolation=cv2.INTER_LINEAR),
            cv2.resize(v, (size, size), interpolation=cv2.INTER_LINEAR))


class _NewtonStep:
    """One Newton update of the ray cast.

    The residual and the Jacobian are linear in the sampled height (H, dH/dU, dH/dV) and displacement
    (D and its two slopes), so both come out of two small matrix products per step.
    """

    def __init__(self, tex: HeadTexture, disp9: np.ndarray, m, a, b, cst):
        self.tex, self.disp = tex, disp9
        dk = tex.disp_scale
        self.dk, self.do = dk, tex.disp_offset
        mb = np.concatenate([m[:, :2], b[:, None]], 1)  # (2,3): image motion of a 3-D displacement
        # columns: residual x, residual y, J00, J10, J01, J11 (without the constant texel-axis part)
        self.w_geo = np.zeros((3, 6), np.float32)
        self.w_geo[0, :2] = b
        self.w_geo[1, 2:4] = b
        self.w_geo[2, 4:6] = b
        self.w_disp = np.zeros((9, 6), np.float32)
        self.w_disp[0:3, :2] = mb.T
        self.w_disp[3:6, 2:4] = mb.T * dk
        self.w_disp[6:9, 4:6] = mb.T * dk
        self.a = [float(a[i, j]) for i in range(2) for j in range(2)]
        self.cst = (float(cst[0]), float(cst[1]))
        self.max_step = 0.6 * tex.rho  # damp wild first steps (a guess far off a cliff) to 0.6 units

    def __call__(self, u, v, qx, qy):
        shape = u.shape
        g = cv2.remap(self.tex.geo, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        d = cv2.remap(self.disp, u * self.dk + self.do[0], v * self.dk + self.do[1], cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_CONSTANT)
        lin = fixed_order_matmul(g.reshape(-1, 3), self.w_geo) + fixed_order_matmul(d.reshape(-1, 9), self.w_disp)
        a00, a01, a10, a11 = self.a
        uf, vf = u.reshape(-1), v.reshape(-1)
        r0 = lin[:, 0] + (a00 * uf + a01 * vf + (self.cst[0] - qx.reshape(-1)))
        r1 = lin[:, 1] + (a10 * uf + a11 * vf + (self.cst[1] - qy.reshape(-1)))
        j00, j10, j01, j11 = lin[:, 2] + a00, lin[:, 3] + a10, lin[:, 4] + a01, lin[:, 5] + a11
        inv_det = 1.0 / (j00 * j11 - j01 * j10 + 1e-12)
        lim = self.max_step
        step_u = np.clip((j11 * r0 - j01 * r1) * inv_det, -lim, lim)
        step_v = np.clip((j00 * r1 - j10 * r0) * inv_det, -lim, lim)
        return (uf - step_u).reshape(shape), (vf - step_v).reshape(shape)


def shade_head(ident: Identity, attr: np.ndarray, detail: np.ndarray | None, c: Mapping[str, float]) -> np.ndarray:
    """Lit colour (h,w,3) of the head from the sampled maps (albedo already carries the features).

    Works in head coordinates: the light and half vectors are rotated into the head frame once, so
    each per-pixel dot product with the normal (-sx, -sy, 1)/|.| costs 5 ops.
    """
    ch = cv2.split(attr)
    sx, sy, ao = ch[A_SLOPE_X], ch[A_SLOPE_Y], ch[A_AO]
    hair, gloss = ch[A_HAIR], ch[A_GLOSS]
    if detail is not None:
        dx, dy, crease = cv2.split(detail)
        sx, sy, ao = sx + dx, sy + dy, ao * (1 - crease)
    rot_t = rotation(c["yaw"], c["pitch"], c["roll"]).T
    light = light_vector(ident)
    half = light + (0.0, 0.0, 1.0)
    half /= np.linalg.norm(half)
    lh, hh = (tuple(float(x) for x in rot_t @ v) for v in (light, half))
    inv = 1.0 / np.sqrt(sx * sx + sy * sy + 1.0)

    def dot(v: tuple[float, float, float]) -> np.ndarray:
        return (v[2] - sx * v[0] - sy * v[1]) * inv

    ndl, ndh = dot(lh), dot(hh)
    lit = (0.3 + 0.7 * ch[A_SHADOW]) * ident.light_intensity  # penumbra and bounce light
    skin = 1.0 - hair
    hard = np.maximum(ndl, 0.0)
    # skin scatters light past the terminator, red most: blend toward a wrapped Lambert per channel
    soft = (np.maximum(ndl + 0.42, 0.0) * (1 / 1.42) - hard) * skin * lit
    base = (0.85 * ident.ambient) * ao + lit * hard
    out = [ch[k] * (base + spread * soft) for k, spread in enumerate((1.0, 0.55, 0.45))]
    # Blinn highlight on skin and lips, Kajiya-Kay band across the hair strands
    spec = np.maximum(ndh, 0.0)
    for _ in range(5):
        spec = spec * spec
    tx, ty, tz = ch[A_TANGENT]
    tdh = tx * hh[0] + ty * hh[1] + tz * hh[2]
    sheen = 1.0 - tdh * tdh
    for _ in range(4):
        sheen = sheen * sheen
    glint = (gloss * lit) * (skin * spec * np.minimum(hard * 4.0, 1.0)
                             + (0.16 * hair) * sheen * np.maximum(ndl + 0.3, 0.0))
    return cv2.merge([out[0] + glint, out[1] + 0.97 * glint, out[2] + 0.92 * glint])


# ----------------------------------------------------------------------------- features painted into the albedo

class FaceFrame:
    """Maps image pixels to the face's own 2-D frame (canonical x right, y down, in units)."""

    def __init__(self, c: Mapping[str, float], size: int):
        m, off = camera(c, size)
        self.a = m[:, :2]
        self.z_axis = m[:, 2]
        self.inv = np.linalg.inv(self.a)
        self.off = off
        self.px = float(np.sqrt(abs(np.linalg.det(self.a))))  # pixels per unit on the face

    def to_face(self, pts: np.ndarray) -> np.ndarray:
        return (np.asarray(pts) - self.off) @ self.inv.T

    def grid(self, roi: Roi) -> tuple[np.ndarray, np.ndarray]:
        gx, gy = roi.grid()
        dx, dy = gx - self.off[0], gy - self.off[1]
        return (self.inv[0, 0] * dx + self.inv[0, 1] * dy, self.inv[1, 0] * dx + self.inv[1, 1] * dy)

    def vec(self, dx: float, dy: float) -> np.ndarray:
        """Image displacement of a face-frame displacement (dx, dy) in units."""
        return self.a @ np.array([dx, dy])


def _eye_outline(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower lid curves from six eye landmarks (corner, upper, upper, corner, lower, lower)."""
    upper = spline(pts[0:4], False, 5)
    lower = spline(np.array([pts[3], pts[4], pts[5], pts[0]]), False, 5)
    return upper, lower


def paint_features(attr: np.ndarray, ident: Identity, lm: np.ndarray, aux: np.ndarray,
                   c: Mapping[str, float], size: int) -> None:
    """Brows, eyes, nostrils, lips and mouth interior, drawn into the sampled albedo and gloss.

    Thin dark strokes of every feature (lashes, lid rims and creases, alar creases, the lip seam)
    are collected and laid down together in one mask at the end.
    """
    ff = FaceFrame(c, size)
    albedo, gloss = attr[..., :3], attr[..., A_GLOSS]
    skin = np.array(ident.skin, np.float32)
    shape = attr.shape[:2]
    strokes: list[tuple[np.ndarray, int, float]] = []  # (polyline, thickness px, darkness 0..1)
    _paint_brows(albedo, attr[..., A_HAIR], ident, lm, ff, shape)
    _paint_eyes(albedo, ident, lm, ff, shape, skin, strokes)
    _paint_nose_and_corners(albedo, lm, ff, shape, skin, strokes)
    _paint_mouth(albedo, gloss, ident, lm, aux, ff, shape, strokes)
    pts = np.concatenate([p for p, _, _ in strokes])
    roi = Roi(pts, 3, shape)
    if not roi.empty:
        m = np.zeros(roi.shape(), np.uint8)
        for line, thickness, dark in sorted(strokes, key=lambda t: t[2]):  # strongest last
            cv2.polylines(m, [roi.fixed(line)], False, int(255 * dark), thickness, cv2.LINE_AA, SHIFT)
        blend(albedo, roi, (0.05, 0.035, 0.03), m.astype(np.float32) * (1 / 255))


def _paint_brows(albedo, hairness, ident: Identity, lm, ff: FaceFrame, shape) -> None:
    """Both brows as tapered, feathered bands along the brow landmarks (hidden under a fringe)."""
    thick = ident.brow_thickness * ff.px
    up = ff.vec(0, -1)
    polys = []
    for pts, outer_first in ((lm[17:22], True), (lm[22:27], False)):
        curve = spline(pts, False, 5)
        tang = np.concatenate([curve[1:2] - curve[:1], curve[2:] - curve[:-2], curve[-1:] - curve[-2:-1]])
        normal = np.stack([tang[:, 1], -tang[:, 0]], 1)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
        normal *= np.sign((normal @ up).mean() + 1e-9)  # point the normal up the forehead
        t = thick * _BROW_PROFILE[::-1 if outer_first else 1]
        top, bottom = curve + normal * (t * 0.45)[:, None], curve - normal * (t * 0.55)[:, None]
        polys.append(np.concatenate([top, bottom[::-1]]))
    roi = Roi(np.concatenate(polys), 2, shape)
    if roi.empty:
        return
    # feathered edges read as hair at this scale
    body = cv2.GaussianBlur(poly_mask(roi, polys), (0, 0), 0.5)
    blend(albedo, roi, np.array(ident.brow_colour, np.float32), body * 0.88 * (1 - hairness[roi.slices]))


_BROW_INNER_FIRST = np.linspace(0, 1, 21)  # 5 landmarks, 5 spline samples per segment
# thickness along the brow from its inner end: full at the head, swelling a little, tapering to the tail
_BROW_PROFILE = ((0.85 + 0.35 * np.sin(np.pi * np.clip(_BROW_INNER_FIRST * 1.4, 0, 1)))
                 * (1 - 0.72 * _BROW_INNER_FIRST ** 2.2))


def _paint_eyes(albedo, ident: Identity, lm, ff: FaceFrame, shape, skin, strokes) -> None:
    """Sclera, iris, pupil, caruncle and lid shadow of both eyes in one patch, clipped to the lids;
    lash lines, lower lid rims and lid creases go to `strokes`."""
    eyes = []
    for pts in (lm[36:42], lm[42:48]):
        upper, lower = _eye_outline(pts)
        f = ff.to_face(pts)
        inner = 3 if abs(f[3, 0]) < abs(f[0, 0]) else 0
        mid = (f[0] + f[3]) / 2
        centre = mid + np.array([0.0, IRIS_DROP]) + ff.inv @ (ff.z_axis * 0.06)  # the iris sits on the eyeball
        up_f = ff.to_face(upper)
        eyes.append(dict(upper=upper, lower=lower, opening=np.concatenate([upper, lower[1:-1]]), mid=mid,
                         centre=centre, inner=f[inner], up_f=up_f[np.argsort(up_f[:, 0])], pts=pts))
    roi = Roi(np.concatenate([e["opening"] for e in eyes]), 2, shape)
    if not roi.empty:
        fx, fy = ff.grid(roi)
        right, left = eyes
        sel = fx > (right["mid"][0] + left["mid"][0]) / 2
        pick = lambda a, b: np.where(sel, b, a)  # noqa: E731
        cx, cy = pick(right["centre"][0], left["centre"][0]), pick(right["centre"][1], left["centre"][1])
        mx = pick(right["mid"][0], left["mid"][0])
        ix, iy = pick(right["inner"][0], left["inner"][0]), pick(right["inner"][1], left["inner"][1])
        lid_y = np.where(sel, np.interp(fx, left["up_f"][:, 0], left["up_f"][:, 1]),
                         np.interp(fx, right["up_f"][:, 0], right["up_f"][:, 1]))
        iris_r = IRIS_RADIUS * ident.eye_width
        r_px = iris_r * ff.px
        d = np.sqrt((fx - cx) ** 2 + (fy - cy) ** 2) * (1 / iris_r)
        sclera_k = 0.8 + 0.2 * np.maximum(1 - np.abs(fx - mx) * (1 / (0.6 * ident.eye_width)), 0)
        ring = np.maximum(1 - d, 0)
        iris_k = (0.55 + 0.65 * ring) * (1 - 0.55 * np.minimum(np.maximum((d - 0.78) * (1 / 0.22), 0), 1))
        a_iris = np.minimum(np.maximum((1 - d) * r_px + 0.5, 0), 1)
        a_pupil = np.minimum(np.maximum((0.42 - d) * r_px + 0.5, 0), 1)
        car = 0.75 * np.exp(-((fx - ix) ** 2 + (fy - iy) ** 2) * (1 / (2 * (0.045 * ident.eye_width / 0.34) ** 2)))
        lid = 1.15 * (0.45 + 0.55 * np.minimum(np.maximum((fy - lid_y) * (1 / (0.45 * ident.eye_height)), 0), 1))
        sclera = np.array([0.8, 0.77, 0.74], np.float32)
        iris = np.array(ident.iris, np.float32)
        pink = skin * np.array([1.0, 0.62, 0.6], np.float32)
        patch = sclera * sclera_k[..., None]
        patch += (iris * iris_k[..., None] - patch) * a_iris[..., None]
        patch += (np.array([0.02, 0.02, 0.025], np.float32) - patch) * a_pupil[..., None]
        patch += (pink - patch) * car[..., None]
        patch *= lid[..., None]
        # the key light's reflection: an albedo far above 1 stays white after shading
        light = light_vector(ident)
        toward = np.array([light[0], light[1]]) / (np.hypot(light[0], light[1]) + 1e-6) * (0.5 * iris_r)
        r_c = 0.2 * iris_r
        small = min(1.0, r_c * ff.px / 0.6)  # a sub-pixel glint is drawn fainter, not bigger
        for e, on in ((right, ~sel), (left, sel)):
            f = ff.to_face(e["pts"])
            opening = min(f[5, 1] - f[1, 1], f[4, 1] - f[2, 1])
            strength = min(max((opening - 0.25 * ident.eye_height) / (0.35 * ident.eye_height), 0.0), 1.0)
            if strength > 0:
                gx, gy = e["centre"] + toward
                dc = np.sqrt((fx - gx) ** 2 + (fy - gy) ** 2)
                a_c = np.minimum(np.maximum((r_c - dc) * ff.px + 0.5, 0), 1) * (0.85 * strength * small) * on
                patch += (3.0 - patch) * a_c[..., None]
        blend(albedo, roi, patch, poly_mask(roi, [e["opening"] for e in eyes]))
    lash = max(1, int(round(0.028 * ff.px)))
    arch = ident.eye_height * 0.62 + 0.07
    for e in eyes:
        upper, pts = e["upper"], e["pts"]
        a, b = pts[0], pts[3]
        crease = np.array([a + ff.vec(0, -0.025), (a + b) / 2 + ff.vec(0, -arch), b + ff.vec(0, -0.035)])
        crease = spline(crease, False, 6)
        strokes += [(upper, lash, 0.9), (e["lower"], 1, 0.2), (crease, 1, 0.13)]


def _paint_nose_and_corners(albedo, lm, ff: FaceFrame, shape, skin, strokes) -> None:
    """Nostrils and the shadows in the mouth corners (one mask); alar creases go to `strokes`."""
    polys, levels = [], []
    for side in (31, 35):
        wing = lm[side] - lm[33]
        centre = lm[33] + wing * 0.52 + (lm[30] - lm[33]) * 0.12
        ln = float(np.linalg.norm(wing))
        polys.append(ellipse_points(centre, (0.3 * ln, 0.11 * ln), float(np.arctan2(wing[1], wing[0])), 14))
        levels.append(0.7)
    for k in (48, 54):
        polys.append(ellipse_points(lm[k], (0.03 * ff.px, 0.02 * ff.px), 0.0, 10))
        levels.append(0.35)
    roi = Roi(np.concatenate(polys), 2, shape)
    if not roi.empty:
        m = np.zeros(roi.shape(), np.uint8)
        for poly, level in zip(polys, levels, strict=True):
            cv2.fillPoly(m, [roi.fixed(poly)], int(255 * level), cv2.LINE_AA, SHIFT)
        blend(albedo, roi, skin * 0.32, m.astype(np.float32) * (1 / 255))
    for side, sgn in ((31, -1), (35, 1)):
        p = lm[side]
        crease = np.array([p + ff.vec(0.0, -0.1), p + ff.vec(sgn * 0.045, -0.04), p + ff.vec(sgn * 0.01, 0.01)])
        strokes.append((spline(crease, False, 5), 1, 0.16))


def _parabola(pts: np.ndarray):
    """y(x) through three points (left, middle, right), as a function of an array of x."""
    (x0, y0), (x1, y1), (x2, y2) = (tuple(map(float, p)) for p in pts)
    d0, d1, d2 = (x0 - x1) * (x0 - x2), (x1 - x0) * (x1 - x2), (x2 - x0) * (x2 - x1)
    d0, d1, d2 = (d if abs(d) > 1e-12 else 1e-12 for d in (d0, d1, d2))
    k0, k1, k2 = y0 / d0, y1 / d1, y2 / d2
    return lambda x: k0 * (x - x1) * (x - x2) + k1 * (x - x0) * (x - x2) + k2 * (x - x0) * (x - x1)


def _polygon_area(p: np.ndarray) -> float:
    return 0.5 * abs(float(np.dot(p[:, 0], np.roll(p[:, 1], 1)) - np.dot(p[:, 1], np.roll(p[:, 0], 1))))


def _paint_mouth(albedo, gloss, ident: Identity, lm, aux, ff: FaceFrame, shape, strokes) -> None:
    """Lips (upper one darker, lower one glossier) and, when open, the mouth interior: dark cavity,
    tongue, lower and upper teeth, shaded under the upper lip."""
    upper_outer = spline(lm[48:55], False, 6)
    lower_outer = spline(lm[[54, 55, 56, 57, 58, 59, 48]], False, 6)
    upper_inner = spline(lm[60:65], False, 6)
    lower_inner = spline(lm[[64, 65, 66, 67, 60]], False, 6)
    roi = Roi(np.concatenate([upper_outer, lower_outer]), 3, shape)
    if roi.empty:
        return
    lip = np.array(ident.lip, np.float32)
    # both lips in one two-channel mask (upper, lower), softened together
    m = np.zeros(roi.shape() + (2,), np.uint8)
    cv2.fillPoly(m, [roi.fixed(np.concatenate([upper_outer, upper_inner[::-1]]))], (255, 0), cv2.LINE_AA, SHIFT)
    cv2.fillPoly(m, [roi.fixed(np.concatenate([lower_outer, lower_inner[::-1]]))], (0, 255), cv2.LINE_AA, SHIFT)
    m = cv2.GaussianBlur(m.astype(np.float32) * (0.95 / 255), (0, 0), 0.45)
    m_up, m_lo = m[..., 0], m[..., 1]
    sub = albedo[roi.slices]
    sub *= (1 - m_up - m_lo)[..., None]
    sub += lip * (0.88 * m_up + 1.03 * m_lo)[..., None]
    g = gloss[roi.slices]
    g += (0.5 - g) * m_lo + (0.28 - g) * m_up
    strokes.append((upper_inner, 1, 0.6))  # the seam between the lips

    opening = np.concatenate([upper_inner, lower_inner[1:-1]])
    if _polygon_area(opening) < 0.3:
        return
    roi = Roi(opening, 2, shape)
    fx, fy = ff.grid(roi)
    hw = max(float(np.abs(ff.to_face(lm[[60, 64]])[:, 0]).max()), 1e-3)
    up_edge = _parabola(ff.to_face(aux[5:8]))
    lo_edge = _parabola(ff.to_face(aux[8:11]))
    tongue = ff.to_face(aux[11:12])[0]
    ui = ff.to_face(upper_inner)
    order = np.argsort(ui[:, 0])
    lip_line = np.interp(fx, ui[order, 0], ui[order, 1])
    across = np.clip(1 - np.abs(fx) / hw, 0, 1)
    px = ff.px
    patch = np.empty(fx.shape + (3,), np.float32)
    patch[:] = np.array([0.2, 0.045, 0.05], np.float32)
    patch *= (0.55 + 0.45 * across)[..., None]
    dt = ((fx - tongue[0]) / (0.62 * hw)) ** 2 + ((fy - tongue[1]) / 0.11) ** 2
    a_t = np.clip((1 - dt) * 0.11 * px * 0.5 + 0.5, 0, 1)
    tongue_colour = np.array([0.68, 0.3, 0.31], np.float32) * (0.7 + 0.3 * np.clip(1 - dt, 0, 1))[..., None]
    patch += (tongue_colour - patch) * a_t[..., None]
    teeth_span = np.clip((0.9 * hw - np.abs(fx)) * px + 0.5, 0, 1)
    a_lo = np.clip((fy - lo_edge(fx)) * px + 0.5, 0, 1) * teeth_span
    patch += (np.array([0.82, 0.8, 0.74], np.float32) * (0.7 + 0.3 * across)[..., None] - patch) * a_lo[..., None]
    a_up = np.clip((up_edge(fx) - fy) * px + 0.5, 0, 1) * teeth_span
    # thin dark gaps between the incisors, every 0.075 units from the middle
    phase = fx * (1 / 0.075) + 0.5
    gaps = np.maximum(1 - np.abs(phase - np.floor(phase) - 0.5) * (0.075 / 0.01), 0) * (np.abs(fx) < 0.27)
    tooth = np.array([0.96, 0.94, 0.88], np.float32) * ((0.68 + 0.32 * across) * (1 - 0.3 * gaps))[..., None]
    patch += (tooth - patch) * a_up[..., None]
    patch *= (0.62 + 0.38 * np.clip((fy - lip_line) / 0.05, 0, 1))[..., None]
    mask = poly_mask(roi, [opening])
    blend(albedo, roi, patch, mask)
    g = gloss[roi.slices]
    g += (0.3 - g) * mask
