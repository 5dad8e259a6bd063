"""Loss curves as PNG, drawn with OpenCV (no matplotlib here), for the `loss_curves` stage.

Only that stage imports this module: the trainers write their CSV logs (`pipeline.training.loop.LossLog`) and
nothing else, so restyling a plot re-runs the cheap drawing stage, never a training stage.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.store import write_png
from pipeline.training.loop import read_loss_csv

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127)]  # RGB


def plot_loss_curves(csv_path: str | Path, png_path: str | Path, title: str = "losses",
                     size: tuple[int, int] = (720, 420)) -> None:
    """Every loss column of the log against step, log10 y axis, one colour per loss, drawn with OpenCV."""
    rows = read_loss_csv(csv_path) if Path(csv_path).is_file() and Path(csv_path).stat().st_size else []
    width, height = size
    left, right, top, bottom = 70, 200, 36, 40
    img = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(img, title, (left, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
    names = [k for k in (rows[0] if rows else {}) if k not in ("step", "seconds")]  # seconds: logs of old runs
    series = {n: np.array([r[n] for r in rows], float) for n in names}
    positive = np.concatenate([v[v > 0] for v in series.values()]) if series else np.array([])
    if len(rows) == 0 or positive.size == 0:
        cv2.putText(img, "no training steps logged", (x0 + 20, (y0 + y1) // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 0, 0), 1, cv2.LINE_AA)
        write_png(png_path, img)
        return
    steps = np.array([r["step"] for r in rows], float)
    lo, hi = math.floor(np.log10(positive.min())), math.ceil(np.log10(positive.max()))
    hi = max(hi, lo + 1)
    s_lo, s_hi = steps.min(), max(steps.max(), steps.min() + 1)

    def to_px(s: np.ndarray, v: np.ndarray) -> np.ndarray:
        px = x0 + (s - s_lo) / (s_hi - s_lo) * (x1 - x0)
        py = y1 - (np.log10(np.maximum(v, 10.0 ** lo)) - lo) / (hi - lo) * (y1 - y0)
        return np.stack([px, py], axis=1).round().astype(np.int32)

    for decade in range(lo, hi + 1):
        y = int(round(y1 - (decade - lo) / (hi - lo) * (y1 - y0)))
        cv2.line(img, (x0, y), (x1, y), (225, 225, 225), 1)
        cv2.putText(img, f"1e{decade}", (8, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for frac in (0.0, 0.5, 1.0):
        x = int(round(x0 + frac * (x1 - x0)))
        cv2.putText(img, f"{int(s_lo + frac * (s_hi - s_lo))}", (x - 12, y1 + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "step", ((x0 + x1) // 2 - 14, height - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    for i, name in enumerate(names):
        colour = _COLOURS[i % len(_COLOURS)]
        values = series[name]
        keep = values > 0  # log axis: zeros (e.g. a disabled loss) are not drawn
        if keep.sum() >= 2:
            cv2.polylines(img, [to_px(steps[keep], values[keep])], False, colour, 1, cv2.LINE_AA)
        elif keep.sum() == 1:
            cv2.circle(img, tuple(int(c) for c in to_px(steps[keep], values[keep])[0]), 2, colour, -1)
        y = y0 + 14 + 18 * i
        cv2.line(img, (x1 + 10, y - 4), (x1 + 30, y - 4), colour, 2)
        cv2.putText(img, name[:22], (x1 + 36, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    write_png(png_path, img)


def draw_loss_curves(csv_paths: list[Path], out_dir: Path | None = None) -> list[Path]:
    """`<stem>.png` for every loss log (beside it, or in `out_dir`); a missing log is a one-line error, an
    empty one (imported weights: no steps) draws a panel saying so. Returns the PNGs written."""
    from pipeline.core.errors import InputError

    missing = [c for c in csv_paths if not Path(c).is_file()]
    if missing:
        raise InputError(missing[0], "loss log not found (run its training stage first)")
    written = []
    for csv_path in map(Path, csv_paths):
        png = (Path(out_dir) if out_dir is not None else csv_path.parent) / f"{csv_path.stem}.png"
        plot_loss_curves(csv_path, png, title=f"{csv_path.stem.replace('_', ' ')} (per term, unweighted)")
        written.append(png)
    return written
