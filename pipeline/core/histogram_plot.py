"""Overlaid histograms with a threshold line, drawn with OpenCV (no matplotlib in this environment)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# the PNG writer of the loss-curve plots (pipeline.training.loop): same error on an unwritable path
from pipeline.core.store import write_png

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]  # RGB


def draw_histograms(series: dict[str, np.ndarray], png_path: str | Path, *, bins: int = 30,
                    threshold: float | None = None, title: str = "", xlabel: str = "",
                    size: tuple[int, int] = (720, 420)) -> None:
    """One outline histogram per named series on shared bins; a dashed vertical line at `threshold`."""
    width, height = size
    left, right, top, bottom = 60, 200, 36, 44
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    img = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, title, (left, 24), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
    finite = {k: np.asarray(v, float)[np.isfinite(np.asarray(v, float))] for k, v in series.items()}
    values = np.concatenate([v for v in finite.values()] + ([np.array([threshold])] if threshold is not None else []))
    if values.size == 0:
        cv2.putText(img, "no values", (x0 + 20, (y0 + y1) // 2), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        write_png(png_path, img)
        return
    lo, hi = float(values.min()), float(values.max())
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    counts = {k: np.histogram(v, edges)[0] for k, v in finite.items()}
    top_count = max(1, max((int(c.max()) for c in counts.values() if c.size), default=1))

    def px(x: float) -> int:
        return int(round(x0 + (x - lo) / (hi - lo) * (x1 - x0)))

    def py(c: float) -> int:
        return int(round(y1 - c / top_count * (y1 - y0)))

    for i, (name, c) in enumerate(counts.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        points = []
        for b in range(bins):
            points += [(px(edges[b]), py(c[b])), (px(edges[b + 1]), py(c[b]))]
        cv2.polylines(img, [np.array([(px(lo), y1), *points, (px(hi), y1)], np.int32)], False, colour, 2,
                      cv2.LINE_AA)
        y = y0 + 14 + 18 * i
        cv2.line(img, (x1 + 10, y - 4), (x1 + 30, y - 4), colour, 2)
        cv2.putText(img, f"{name[:18]} (n={len(finite[name])})", (x1 + 36, y), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    if threshold is not None:
        x = px(threshold)
        for y in range(y0, y1, 8):
            cv2.line(img, (x, y), (x, min(y + 4, y1)), (0, 0, 0), 1)
        cv2.putText(img, f"threshold {threshold:g}", (min(x + 4, x1 - 90), y0 + 14), font, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    for frac in (0.0, 0.5, 1.0):
        x = lo + frac * (hi - lo)
        cv2.putText(img, f"{x:.3g}", (px(x) - 14, y1 + 16), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, str(top_count), (8, y0 + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "0", (40, y1 + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, ((x0 + x1) // 2 - 40, height - 10), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    write_png(png_path, img)

