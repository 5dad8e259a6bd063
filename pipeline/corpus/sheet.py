"""Contact sheet of a corpus: rows = emotions, columns = actors, plus one clip's mouth over time."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import zarr

from pipeline.core.store import write_png

MOUTH_POINTS = slice(48, 68)


def _label(img: np.ndarray, text: str, scale: float = 0.4) -> np.ndarray:
    img = img.copy()
    cv2.putText(img, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def mouth_crop(frame: np.ndarray, landmarks: np.ndarray, out: int) -> np.ndarray:
    """Square crop around the mouth landmarks (lower-middle of the frame when there are none)."""
    h, w = frame.shape[:2]
    pts = landmarks[MOUTH_POINTS]
    if np.isfinite(pts).all():
        cx, cy = pts.mean(axis=0)
        side = max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1])) * 1.6
    else:
        cx, cy, side = w / 2, h * 0.72, w * 0.4
    side = int(max(side, 8))
    x0, y0 = int(cx - side / 2), int(cy - side / 2)
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return cv2.resize(padded[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side], (out, out),
                      interpolation=cv2.INTER_AREA)


def corpus_contact_sheet(corpus_dir: str | Path, out_png: str | Path, max_actors: int = 10,
                         strip_frames: int = 24) -> np.ndarray:
    corpus_dir = Path(corpus_dir)
    manifest = pd.read_parquet(corpus_dir / "manifest.parquet")
    real = manifest[manifest.kind == "real"]
    root = zarr.open_group(corpus_dir / "frames.zarr", mode="r")
    frames, landmarks = root["frames"], root["landmarks"]
    size = frames.shape[1]
    test_actors = sorted(real[real.split == "test"].actor.unique())[: max_actors // 2]
    train_actors = sorted(real[real.split != "test"].actor.unique())[: max_actors - len(test_actors)]
    actors = train_actors + test_actors
    emotions = list(dict.fromkeys(real.emotion))
    blink = None
    if "render_params" in root and "blink" in root.attrs.get("render_params", []):
        blink = root["render_params"].get_orthogonal_selection(
            (slice(None), root.attrs["render_params"].index("blink")))

    def middle_frame(row) -> np.ndarray:
        """The frame nearest the middle of the clip with the eyes open (a blink hides the upper face)."""
        order = sorted(range(int(row.start), int(row.stop)), key=lambda i: abs(i - (row.start + row.stop) // 2))
        pick = next((i for i in order if blink is None or blink[i] < 0.2), order[0])
        return frames[pick]

    header = np.full((16, size * (len(actors) + 1), 3), 255, np.uint8)
    for j, actor in enumerate(actors):
        split = real[real.actor == actor].split.iloc[0]
        cv2.putText(header, f"{actor} ({split})", (size * (j + 1) + 3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (0, 0, 0), 1, cv2.LINE_AA)
    rows = [header]
    for emotion in emotions:
        cells = [_label(np.full((size, size, 3), 255, np.uint8), emotion, 0.45)]
        for actor in actors:
            sel = real[(real.actor == actor) & (real.emotion == emotion)]
            if sel.empty:
                cells.append(np.full((size, size, 3), 200, np.uint8))
                continue
            row = sel[sel.level == sel.level.max()].sort_values("sentence_id").iloc[0]
            cells.append(middle_frame(row))
        rows.append(np.concatenate(cells, axis=1))
    sheet = np.concatenate(rows, axis=0)

    # one clip's mouth over time: the first actor's first clip
    clip = real[real.actor == actors[0]].iloc[0]
    sheet = with_mouth_strip(sheet, frames, landmarks, clip, strip_frames, "")
    write_png(out_png, sheet)
    return sheet


def with_mouth_strip(sheet: np.ndarray, frames, landmarks, clip, strip_frames: int, caption_prefix: str
                     ) -> np.ndarray:
    """`sheet` with a caption and a row of mouth crops of evenly spaced frames of `clip` (a manifest row) below."""
    idx = np.linspace(clip.start, clip.stop - 1, min(strip_frames, int(clip.frames))).astype(int)
    cell = sheet.shape[1] // len(idx)
    strip = np.concatenate([mouth_crop(frames[i], landmarks[i], cell) for i in idx], axis=1)
    strip = np.pad(strip, ((0, 0), (0, sheet.shape[1] - strip.shape[1]), (0, 0)), constant_values=255)
    caption = np.full((16, sheet.shape[1], 3), 255, np.uint8)
    cv2.putText(caption, f"{caption_prefix}mouth over time: {clip.clip_id} \"{clip.text}\"", (3, 12),
                cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([sheet, caption, strip], axis=0)


def identity_sheet(corpus_dir: str | Path, out_png: str | Path, columns: int = 16, rows: int = 6,
                   strip_frames: int = 24) -> np.ndarray:
    """Many identities at a glance (the wide set's point): reference faces of the first training identities
    and of the held-out ones (framed in red), then one clip's mouth over time."""
    corpus_dir = Path(corpus_dir)
    manifest = pd.read_parquet(corpus_dir / "manifest.parquet")
    root = zarr.open_group(corpus_dir / "frames.zarr", mode="r")
    refs, ids = root["reference_frames"], [str(a) for a in root["reference_actor"][:]]
    size = refs.shape[1]
    split = dict(zip(manifest.actor, manifest.split))
    test = [i for i, a in enumerate(ids) if split.get(a) == "test"][: columns]
    train = [i for i, a in enumerate(ids) if split.get(a) != "test"][: columns * rows - len(test)]
    cells = [_label(refs[i], ids[i], 0.3) for i in train]
    for i in test:  # held-out identities framed in red
        cells.append(cv2.rectangle(_label(refs[i], ids[i], 0.3), (0, 0), (size - 1, size - 1), (220, 0, 0), 2))
    cells += [np.full((size, size, 3), 255, np.uint8)] * (-len(cells) % columns)
    grid = np.concatenate([np.concatenate(cells[r: r + columns], axis=1) for r in range(0, len(cells), columns)])
    sheet = with_mouth_strip(grid, root["frames"], root["landmarks"], manifest.iloc[0], strip_frames,
                             f"{manifest.actor.nunique()} identities; ")
    write_png(out_png, sheet)
    return sheet
