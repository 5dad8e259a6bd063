"""Ingest a real LRW tree into the wide set's outputs (stage wide_corpus, `source: lrw`).

LRW layout: `lipread_mp4/<WORD>/{train,val,test}/<WORD>_<nnnnn>.mp4` (29 frames at 25 fps, 256 px, audio
muxed in) with a `<WORD>_<nnnnn>.txt` beside each (`Text: WORD`, ...). `wide_corpus.lrw_root` may name the
`lipread_mp4` folder or the folder holding it. Each clip gets the same face crop, resize, 25 fps and 16 kHz
treatment as MEAD clips (corpus.mead.ingest_videos).

LRW has no speaker labels, so every clip is its own actor (its first frame is its reference) and
held-out means LRW's val and test splits, which were cut by broadcast date: a speaker may appear in both.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

from pipeline.core.config import BaseParams, WideCorpusParams
from pipeline.core.errors import InputError
from pipeline.corpus.mead import (
    MISSING_COLUMNS,
    VideoClip,
    ingest_videos,
    write_real_tables,
)

CLIP_NAME = re.compile(r"^([A-Z0-9']+)_(\d+)$")
SPLITS = {"train": "train", "val": "test", "test": "test"}  # LRW split -> ours


def lrw_folder(root: str | Path) -> Path:
    """The `lipread_mp4` folder: `root` itself or its child of that name."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "LRW root not found")
    return root / "lipread_mp4" if (root / "lipread_mp4").is_dir() else root


def _text(txt: Path, word: str) -> str:
    """The `Text:` line of an LRW .txt file, else the folder's word."""
    if txt.is_file():
        for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Text:"):
                return line.split(":", 1)[1].strip() or word
    return word


def scan_lrw(root: str | Path, p: WideCorpusParams) -> tuple[list[VideoClip], pd.DataFrame]:
    """Every LRW clip under root (`lrw_words` only when given; at most `lrw_max_clips_per_word` per word and
    split), and a table of .txt files whose video is missing."""
    folder = lrw_folder(root)
    words = sorted(d.name for d in folder.iterdir() if d.is_dir() and any((d / s).is_dir() for s in SPLITS))
    if not words:
        raise InputError(folder, "not an LRW tree (expected lipread_mp4/<WORD>/{train,val,test}/<WORD>_<nnnnn>.mp4)")
    if p.lrw_words:
        wanted = {w.upper() for w in p.lrw_words}
        words = [w for w in words if w in wanted]
        if not words:
            raise InputError(folder, f"none of wide_corpus.lrw_words {sorted(wanted)} is in the tree")
    clips, missing = [], []
    for word in words:
        for lrw_split, split in SPLITS.items():
            folder_split = folder / word / lrw_split
            if not folder_split.is_dir():
                continue
            stems = sorted({f.stem for f in folder_split.iterdir()
                            if f.suffix in (".mp4", ".txt") and CLIP_NAME.match(f.stem)})
            if p.lrw_max_clips_per_word:
                stems = stems[: p.lrw_max_clips_per_word]
            for stem in stems:
                number = int(CLIP_NAME.match(stem).group(2))
                video = folder_split / f"{stem}.mp4"
                if not video.is_file():
                    missing.append({"actor": f"lrw_{lrw_split}_{stem}", "emotion": "neutral", "level": 1,
                                    "clip": number, "missing": "video",
                                    "reason": f"{folder_split / stem}.txt: no matching video file"})
                    continue
                clip_id = f"lrw_{lrw_split}_{stem}"
                clips.append(VideoClip(clip_id, clip_id, "neutral", 1, number, video, video, split,
                                       _text(folder_split / f"{stem}.txt", word)))
    if not clips:
        raise InputError(folder, "no LRW clip (.mp4) found")
    return clips, pd.DataFrame(missing, columns=MISSING_COLUMNS)


def ingest_lrw(out_dir: str | Path, base: BaseParams, p: WideCorpusParams,
               log=lambda line: print(line, file=sys.stderr)) -> pd.DataFrame:
    """Write an LRW tree into out_dir in the corpus layout; return the manifest."""
    out_dir = Path(out_dir)
    found, missing = scan_lrw(p.lrw_root, p)
    done = ingest_videos(out_dir, found, missing, base, p, "wide_corpus", "lrw", lrw_folder(p.lrw_root), log)
    return write_real_tables(out_dir, done, base.fps, {c.actor for c in done.clips if c.split == "test"})
