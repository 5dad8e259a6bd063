"""The figures stage's work (issue 8, item 4): a Fig. 6-style sheet and a side-by-side mp4 of the generated rows.

Both show one held-out actor saying one held-out sentence in every emotion, each emotion at its strongest
level (`figures.level`, else the highest the outputs have; neutral only has level 1):
  sheet  rows = `figures.sheet_rows` (Baseline / MMN / EMMN / GT), columns = emotions; each cell is one frame
         of that row's clip, at the same frame index in every row (the moment, see `pick_frame`)
  video  columns = `figures.video_columns` (reference | GT | Wav2Lip-only | EMMN), the emotions' clips one
         after another with their own audio
`reference` is not a row of data/outputs/frames.zarr but the actor's neutral reference frame from the corpus
(the photo every generated row starts from). Rows the outputs lack are skipped and named in a caption.
Labels and frame sizes follow the generate stage's emotions sheet (its helpers are imported, not copied).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.core.config import BaseParams, FiguresParams
from pipeline.core.errors import InputError
from pipeline.core.store import atomic_output, open_store, read_index
from pipeline.render.generate_set import (
    ROWS,
    _label,
    _reference,
    _resize,
    output_clip_id,
)

REFERENCE = "reference"  # the neutral reference frame of the corpus, not a generated row
LABELS = {REFERENCE: "reference", "ground_truth": "GT", "static": "static", "wav2lip_only": "Wav2Lip-only",
          "baseline": "Baseline", "mmn": "MMN", "emmn": "EMMN"}
MOMENTS = ("mouth", "fraction")
HEADER = 16  # px of the label strips (what `_label` draws into: text baseline at y=12)
CAPTION_LINE = 14  # px per caption line
FONT, CAPTION_SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.35
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))  # iBUG 68: upper / lower inner-lip points facing each other


@dataclass(frozen=True)
class Selection:
    """The clips both pictures show: one per emotion (in `emotions` order) of one actor and sentence."""

    actor: str
    sentence_id: int
    clips: pd.DataFrame  # manifest rows, index = emotion
    missing_emotions: tuple[str, ...]  # asked for in figures.emotions, no clip in the outputs


def check_params(p: FiguresParams) -> None:
    if p.moment not in MOMENTS:
        raise InputError("params.yaml", f"figures.moment '{p.moment}': expected one of {list(MOMENTS)}")
    if not 0.0 <= p.fraction <= 1.0:
        raise InputError("params.yaml", f"figures.fraction {p.fraction}: expected a value in [0, 1]")


def generated_clips(store: Path) -> dict[str, pd.DataFrame]:
    """{row: its index rows (corpus clip id -> start, stop in the store)} of a generated frames.zarr."""
    index = read_index(store)
    parts = index.clip_id.str.split("/", n=1, expand=True)
    frame = index.assign(row=parts[0], corpus_clip_id=parts[1])
    return {r: g.set_index("corpus_clip_id")[["start", "stop"]] for r, g in frame.groupby("row", sort=False)}


def check_rows(requested: tuple[str, ...], present: set[str], key: str) -> tuple[list[str], list[str]]:
    """The requested rows the outputs hold (`reference` always), in params order, and the missing ones."""
    unknown = [r for r in requested if r != REFERENCE and r not in ROWS]
    if unknown:
        raise InputError("params.yaml", f"figures.{key}: unknown row(s) {unknown}; known: {[REFERENCE, *ROWS]}")
    rows = list(dict.fromkeys(requested))
    kept = [r for r in rows if r == REFERENCE or r in present]
    if not any(r != REFERENCE for r in kept):
        raise InputError("params.yaml", f"figures.{key}: none of {rows} is in the generated outputs "
                                        f"(they hold {sorted(present)})")
    return kept, [r for r in rows if r not in kept]


def common_clips(generated: dict[str, pd.DataFrame], rows: list[str]) -> set[str]:
    """Corpus clips every one of the (generated) rows holds."""
    return set.intersection(*(set(generated[r].index) for r in rows if r != REFERENCE))


def select_clips(manifest: pd.DataFrame, generated: set[str], p: FiguresParams) -> Selection:
    """One held-out actor (`actor`, null = the first) and sentence (`sentence`, null = the one with the most
    emotions, the first of those), and per emotion its clip at level `level`, else the highest level there is.
    Only clips present in the generated outputs count (generate.max_clips may have thinned them)."""
    clips = manifest[manifest.clip_id.isin(generated)]
    if clips.empty:
        raise InputError("frames.zarr", "no generated clip is in the corpus manifest (outputs from another corpus?)")
    actors = sorted(clips.actor.unique())
    actor = p.actor or actors[0]
    if actor not in actors:
        raise InputError("params.yaml", f"figures.actor '{actor}' has no generated clips (held-out actors: {actors})")
    mine = clips[clips.actor == actor]
    if p.sentence is None:
        counts = mine.groupby("sentence_id").emotion.nunique()
        sentence = int(counts[counts == counts.max()].index.min())
    else:
        sentence = int(p.sentence)
        if sentence not in set(mine.sentence_id):
            raise InputError("params.yaml", f"figures.sentence {sentence}: actor {actor} has no generated clip of it "
                                            f"(sentences: {sorted(set(mine.sentence_id))})")
    mine = mine[mine.sentence_id == sentence]
    chosen, missing = {}, []
    for emotion in dict.fromkeys(p.emotions):
        options = mine[mine.emotion == emotion]
        if options.empty:
            missing.append(emotion)
            continue
        preferred = options[options.level == p.level]
        chosen[emotion] = (preferred if len(preferred) else options[options.level == options.level.max()]).iloc[0]
    if not chosen:
        raise InputError("params.yaml", f"figures.emotions: actor {actor}, sentence {sentence} has none of "
                                        f"{list(p.emotions)} in the outputs")
    return Selection(actor, sentence, pd.DataFrame(chosen.values(), index=list(chosen)), tuple(missing))


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Per frame, the mean vertical gap between facing inner-lip points of 68-point landmarks (T, 68, 2), px."""
    upper = landmarks[:, [u for u, _ in INNER_LIP_PAIRS], 1]
    lower = landmarks[:, [lo for _, lo in INNER_LIP_PAIRS], 1]
    return np.abs(lower - upper).mean(axis=1)


def pick_frame(corpus_frames: object, clip: pd.Series, p: FiguresParams) -> tuple[int, str]:
    """The frame (offset in the clip) every row shows for this emotion, and how it was chosen.

    mouth: where the real clip's mouth is widest open (corpus landmarks): the moment that shows mouth shape
    and expression together, and a comparable speech moment across rows since all rows share the clip's
    audio and length. Corpora without landmarks (MEAD) fall back to `fraction`.
    fraction: the frame at that relative time, round(fraction * (frames - 1)).
    """
    n = int(clip.stop) - int(clip.start)
    if p.moment == "mouth" and "landmarks" in corpus_frames:
        landmarks = np.asarray(corpus_frames["landmarks"][int(clip.start):int(clip.stop)], np.float64)
        if np.isfinite(landmarks).all():
            return int(np.argmax(mouth_opening(landmarks))), "widest-open mouth of the real clip"
    return int(round(p.fraction * (n - 1))), f"{p.fraction:g} of the clip"


def _blank(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), 255, np.uint8)


def _strip(labels: list[str], size: int) -> np.ndarray:
    """A HEADER-high white strip: one `_label` per size-wide column."""
    return np.concatenate([_label(_blank(HEADER, size), text) for text in labels], axis=1)


def caption(lines: list[str], width: int) -> np.ndarray:
    """White strip with the lines in black, word-wrapped to `width`."""
    wrapped = []
    for line in lines:
        words, current = line.split(), ""
        for word in words:
            trial = f"{current} {word}".strip()
            if current and cv2.getTextSize(trial, FONT, CAPTION_SCALE, 1)[0][0] > width - 6:
                wrapped.append(current)
                trial = word
            current = trial
        wrapped.append(current)
    strip = _blank(CAPTION_LINE * len(wrapped), width)
    for i, text in enumerate(wrapped):
        cv2.putText(strip, text, (3, CAPTION_LINE * i + 11), FONT, CAPTION_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def _clip_frames(generated: dict[str, pd.DataFrame], row: str, clip: pd.Series) -> tuple[int, int]:
    """Store rows of one generated clip; it must be as long as the corpus clip (the generate contract)."""
    start, stop = (int(v) for v in generated[row].loc[clip.clip_id, ["start", "stop"]])
    if stop - start != int(clip.frames):
        raise InputError(output_clip_id(row, clip.clip_id), f"{stop - start} frames, the corpus clip has "
                                                            f"{int(clip.frames)}")
    return start, stop


def fig6_sheet(store: Path, corpus_dir: Path, out_png: Path, p: FiguresParams, log=print) -> dict:
    """Fig. 6-style PNG: a label column, then one column per emotion; a row per `sheet_rows` entry."""
    check_params(p)
    manifest = pd.read_parquet(corpus_dir / "manifest.parquet")
    generated = generated_clips(store)
    rows, skipped = check_rows(p.sheet_rows, set(generated), "sheet_rows")
    selection = select_clips(manifest, common_clips(generated, rows), p)
    frames = open_store(store)["frames"]
    size = int(frames.shape[1])
    corpus_frames = open_store(corpus_dir / "frames.zarr")
    reference = _resize(_reference(str(corpus_dir), selection.actor)[None], size)[0]
    picks, how = {}, set()
    for emotion, clip in selection.clips.iterrows():
        picks[emotion], method = pick_frame(corpus_frames, clip, p)
        how.add(method)
    columns = list(selection.clips.index)
    lines = [_strip([f"{selection.actor} s{selection.sentence_id}",
                     *[f"{e} l{int(selection.clips.loc[e].level)}" for e in columns]], size)]
    for row in rows:
        cells = [_label(_blank(size, size), LABELS[row])]
        for j, emotion in enumerate(columns):
            if row == REFERENCE:
                cells.append(reference if j == 0 else _blank(size, size))
            else:
                start, _ = _clip_frames(generated, row, selection.clips.loc[emotion])
                cells.append(np.asarray(frames[start + picks[emotion]]))
        lines.append(np.concatenate(cells, axis=1))
    notes = [f"Frame: {', '.join(sorted(how))}, the same frame index in every row."]
    if skipped:
        notes.append(f"Not in the generated outputs, skipped: {', '.join(skipped)}.")
    if selection.missing_emotions:
        notes.append(f"No generated clip for: {', '.join(selection.missing_emotions)}.")
    width = size * (1 + len(columns))
    lines.append(caption(notes, width))
    sheet = np.concatenate(lines, axis=0)
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise InputError(out_png, "could not encode the PNG")
    with atomic_output(out_png) as tmp:
        tmp.write_bytes(png.tobytes())
    if skipped:
        log(f"figures: sheet skips row(s) {skipped}: not in {store}")
    return {"actor": selection.actor, "sentence_id": selection.sentence_id, "rows": rows, "skipped_rows": skipped,
            "emotions": columns, "missing_emotions": list(selection.missing_emotions),
            "clips": selection.clips.clip_id.tolist(), "frame_offsets": [picks[e] for e in columns],
            "caption": notes, "cell": size}


def _fitted_audio(wav: Path, frames: int, base: BaseParams) -> np.ndarray:
    """The clip's audio cut or zero-padded to exactly its video's duration, so concatenated clips stay in sync."""
    from pipeline.core.media import load_audio

    samples = load_audio(wav, base.sample_rate)
    n = int(round(frames / base.fps * base.sample_rate))
    return np.pad(samples[:n], (0, max(0, n - len(samples))))


def side_by_side(store: Path, corpus_dir: Path, out_mp4: Path, base: BaseParams, p: FiguresParams,
                 log=print) -> dict:
    """H.264 + AAC mp4: a labelled column per `video_columns` entry, the chosen clips one after another."""
    from pipeline.core.media import write_wav
    from pipeline.core.mp4_stream import Mp4StreamWriter

    manifest = pd.read_parquet(corpus_dir / "manifest.parquet")
    generated = generated_clips(store)
    columns, skipped = check_rows(p.video_columns, set(generated), "video_columns")
    selection = select_clips(manifest, common_clips(generated, columns), p)
    wanted = list(dict.fromkeys(p.video_emotions)) or list(selection.clips.index)
    emotions = [e for e in wanted if e in selection.clips.index]
    if not emotions:
        raise InputError("params.yaml", f"figures.video_emotions {wanted}: none has a clip of actor "
                                        f"{selection.actor}, sentence {selection.sentence_id} in the outputs")
    if len(emotions) < len(wanted):
        log(f"figures: video skips emotion(s) {[e for e in wanted if e not in emotions]}: no generated clip")
    clips = selection.clips.loc[emotions]
    frames = open_store(store)["frames"]
    size = int(frames.shape[1])
    reference = _resize(_reference(str(corpus_dir), selection.actor)[None], size)[0]
    header = _strip([LABELS[c] for c in columns], size)
    note = f" (not generated: {', '.join(skipped)})" if skipped else ""
    width, height = size * len(columns), 2 * HEADER + size
    with tempfile.TemporaryDirectory(prefix="figures-") as tmp:
        audio = Path(tmp) / "audio.wav"
        write_wav(audio, np.concatenate([_fitted_audio(corpus_dir / c.wav_path, int(c.frames), base)
                                         for _, c in clips.iterrows()]), base.sample_rate)
        with Mp4StreamWriter(out_mp4, width, height, base.fps, audio, crf=p.crf) as writer:
            for emotion, clip in clips.iterrows():
                n = int(clip.frames)
                blocks = []
                for column in columns:
                    if column == REFERENCE:
                        blocks.append(np.repeat(reference[None], n, axis=0))
                    else:
                        start, stop = _clip_frames(generated, column, clip)
                        blocks.append(np.asarray(frames[start:stop]))
                footer = _label(_blank(HEADER, width), f"{emotion} l{int(clip.level)}: {clip.clip_id}{note}")
                video = np.concatenate(blocks, axis=2)
                writer.write(np.concatenate([np.repeat(header[None], n, 0), video, np.repeat(footer[None], n, 0)],
                                            axis=1))
    if skipped:
        log(f"figures: video skips column(s) {skipped}: not in {store}")
    return {"columns": columns, "skipped_columns": skipped, "emotions": emotions, "clips": clips.clip_id.tolist(),
            "frames": int(clips.frames.sum()), "width": width, "height": height}


def run_figures(outputs: Path, corpus_dir: Path, sheet_png: Path, video_mp4: Path, base: BaseParams,
                p: FiguresParams, log=print) -> dict:
    """Both pictures; returns what they show (actor, sentence, rows, skipped rows, clips)."""
    if not (Path(outputs) / "zarr.json").is_file():
        raise InputError(outputs, "generated outputs not found (run generate first)")
    if not (Path(corpus_dir) / "manifest.parquet").is_file():
        raise InputError(Path(corpus_dir) / "manifest.parquet", "corpus manifest not found (run corpus first)")
    sheet = fig6_sheet(Path(outputs), Path(corpus_dir), Path(sheet_png), p, log)
    video = side_by_side(Path(outputs), Path(corpus_dir), Path(video_mp4), base, p, log)
    log(f"figures: sheet {len(sheet['rows'])} rows x {len(sheet['emotions'])} emotions ({sheet['actor']}, sentence "
        f"{sheet['sentence_id']}) -> {sheet_png}; video {len(video['columns'])} columns, {video['frames']} frames "
        f"-> {video_mp4}")
    return {"sheet": sheet, "video": video}
