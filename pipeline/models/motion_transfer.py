"""Relative keypoint transfer for FOMM animation (the official `normalize_kp` of animate.py / demo.py).

The driving video's motion relative to its first frame is applied to the source keypoints:

    value    = source.value + (driving.value - driving_initial.value) * scale
    jacobian = driving.J @ inverse(driving_initial.J) @ source.J

with scale = sqrt(area(hull(source.value[0]))) / sqrt(area(hull(driving_initial.value[0]))) when adapting
the movement scale (only batch item 0 is used, as in the official code), else 1.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from pipeline.core.errors import InputError


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Vertices of the 2-D convex hull of `points` [N,2], counter-clockwise, collinear points dropped.

    Andrew's monotone chain, O(N log N). Fewer than 3 distinct points give the distinct points.
    """
    pts = np.unique(np.asarray(points, dtype=np.float64).reshape(-1, 2), axis=0)  # sorted by x, then y
    if len(pts) < 3:
        return pts

    def cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half_hull(ordered: np.ndarray) -> list[np.ndarray]:
        chain: list[np.ndarray] = []
        for p in ordered:
            # Pop while the last turn is clockwise or straight: keeps only strict left turns.
            while len(chain) >= 2 and cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain

    lower, upper = half_hull(pts), half_hull(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])  # each chain's last point starts the other chain


def polygon_area(vertices: np.ndarray) -> float:
    """Area of a simple polygon given its vertices in order (shoelace formula); 0 for < 3 vertices."""
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    if len(v) < 3:
        return 0.0
    x, y = v[:, 0], v[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def convex_hull_area(points: np.ndarray | torch.Tensor) -> float:
    """Area enclosed by the convex hull of 2-D points [N,2] (scipy's `ConvexHull(points).volume`)."""
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().double().numpy()
    return polygon_area(convex_hull(points))


def movement_scale(source_value: torch.Tensor, driving_initial_value: torch.Tensor,
                   source_area: float | None = None, driving_area: float | None = None) -> float:
    """sqrt(source hull area) / sqrt(driving-initial hull area), from batch item 0 of [B,N,2] values.

    Precomputed areas may be passed (they stay constant over a video).
    """
    if source_area is None:
        source_area = convex_hull_area(source_value[0])
    if driving_area is None:
        driving_area = convex_hull_area(driving_initial_value[0])
    if not driving_area > 0:
        raise InputError(None, "driving keypoints of the initial frame are collinear (convex hull area 0): "
                               "cannot adapt the movement scale")
    return float(np.sqrt(source_area) / np.sqrt(driving_area))


def relative_motion(
    kp_source: Mapping[str, torch.Tensor],
    kp_driving: Mapping[str, torch.Tensor],
    kp_driving_initial: Mapping[str, torch.Tensor],
    use_relative_movement: bool = True,
    use_relative_jacobian: bool = True,
    adapt_movement_scale: bool = False,
    source_area: float | None = None,
    driving_area: float | None = None,
) -> dict[str, torch.Tensor]:
    """Driving keypoints re-expressed relative to the source (FOMM `normalize_kp`).

    Without `use_relative_movement` the driving keypoints are returned unchanged (absolute transfer);
    as in the official code, `use_relative_jacobian` only acts together with it. Keypoints without a
    `jacobian` entry get a relative `value` only. Other entries (e.g. `heatmap`) are the driving ones.
    """
    kp_new = dict(kp_driving)
    if not use_relative_movement:
        return kp_new
    scale = (movement_scale(kp_source["value"], kp_driving_initial["value"], source_area, driving_area)
             if adapt_movement_scale else 1.0)
    kp_new["value"] = (kp_driving["value"] - kp_driving_initial["value"]) * scale + kp_source["value"]
    if use_relative_jacobian and "jacobian" in kp_driving:
        jacobian_change = torch.matmul(kp_driving["jacobian"], torch.inverse(kp_driving_initial["jacobian"]))
        kp_new["jacobian"] = torch.matmul(jacobian_change, kp_source["jacobian"])
    return kp_new
