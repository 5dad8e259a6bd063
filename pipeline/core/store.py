"""Zarr + Parquet helpers: ragged per-frame stores, per-clip index, atomic outputs.

Layout of every feature store (Zarr format 3): per-frame arrays of all clips concatenated along
axis 0, sharded along axis 0 (few files, so DVC hashing stays fast), Blosc zstd; a per-clip index
(`clip_id`, `start`, `stop`) inside the store and mirrored as `index.parquet` beside the arrays.
Root attributes: schema, producing stage, resolved params.

Each shard is written exactly once, whole, by one writer: `RaggedStoreWriter` buffers frames in
order and flushes complete shards (parallel writers into one shard lose data).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from pipeline.core.errors import InputError

SCHEMA_VERSION = 1
INDEX_FILE = "index.parquet"


def blosc_zstd(dtype: np.dtype) -> BloscCodec:
    # byte shuffle helps multi-byte floats; on uint8 frames bitshuffle compressed 12% worse than none
    shuffle = BloscShuffle.noshuffle if np.dtype(dtype).itemsize == 1 else BloscShuffle.shuffle
    return BloscCodec(cname="zstd", clevel=5, shuffle=shuffle)


def temp_sibling(path: str | Path) -> Path:
    """`.<stem>.tmp-<pid><suffix>` beside `path`: hidden, keeps the suffix (ffmpeg, OpenCV and pandas pick
    the format by it) and names the writing process, so a later run can tell a dead writer's leftovers."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    try:  # a killed child its parent has not reaped yet is dead too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temp siblings of `path` (see temp_sibling) whose writer is dead: SIGKILL, OOM kill or a
    power cut leave them, and nothing else ever would. A live writer's temp is left alone."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.tmp-(\d+){re.escape(path.suffix)}")
    pids = {sib: int(m.group(1)) for sib in path.parent.iterdir() if (m := pattern.fullmatch(sib.name))}
    stale = [sib for sib, pid in pids.items() if pid != os.getpid() and not _pid_alive(pid)]
    for sib in stale:
        _remove(sib)
    return stale


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def exit_on_signals() -> None:
    """SIGTERM raises SystemExit (as SIGINT raises KeyboardInterrupt), so `finally`/`except` blocks run:
    temps are removed, ffmpeg and Dask workers stopped, instead of the process dying mid-write.
    Only in the main thread, and only where SIGTERM still has its default (deadly) action."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_signal)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it into place only if the block succeeds.

    Dead writers' temps of `path` are removed first; on an exception, SIGTERM or SIGINT the temp is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exit_on_signals()
    remove_stale_temps(path)
    tmp = temp_sibling(path)
    _remove(tmp)
    try:
        yield tmp
        _remove(path)
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _discard(tmp: Path) -> None:
    """Remove an abandoned temp. Zarr's I/O thread may still be finishing a write into it when a signal
    interrupts the main thread, so retry until it stays gone (about a second at most)."""
    for _ in range(20):
        try:
            _remove(tmp)
        except OSError:  # "directory not empty": a file landed during rmtree
            pass
        time.sleep(0.05)
        if not (tmp.exists() or tmp.is_symlink()):
            return
    _remove(tmp)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Every small output file goes through here: written to a temp name, renamed when complete."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def report_values(value: Any) -> Any:
    """A report's numbers as JSON wants them: floats (NumPy's too) rounded to 6 decimals, NaN/inf -> null,
    NumPy integers -> int; dicts recursively, anything else as it is."""
    if isinstance(value, dict):
        return {k: report_values(v) for k, v in value.items()}
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(float(value)) else round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """An RGB uint8 image as PNG (OpenCV's encoder, through write_bytes)."""
    import cv2

    ok, png = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    write_bytes(path, png.tobytes())


def write_parquet(frame: pd.DataFrame, path: str | Path) -> None:
    """A table (its index dropped) as Parquet, atomically, without pandas' schema metadata: that names
    the pandas and pyarrow versions and version-dependent dtype names, so the same table would give
    other bytes under other library versions. Plain columns read back the same without it."""
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)


@dataclass(frozen=True)
class ArraySpec:
    """One per-frame array: the shape of a single frame's entry, dtype and axis names."""

    tail_shape: tuple[int, ...]
    dtype: str
    dims: tuple[str, ...]  # names of the tail axes; axis 0 is always "frame"


class RaggedStoreWriter:
    """Writes clips, in index order, into concatenated arrays; each shard is flushed once, whole."""

    def __init__(
        self,
        path: str | Path,
        clip_ids: list[str],
        lengths: list[int],
        arrays: Mapping[str, ArraySpec],
        *,
        attrs: Mapping[str, Any],
        chunk_frames: int,
        shard_frames: int,
    ):
        if len(clip_ids) != len(lengths):
            raise ValueError("clip_ids and lengths differ in length")
        if shard_frames % chunk_frames:
            raise ValueError("shard_frames must be a multiple of chunk_frames")
        self.path = Path(path)
        self.clip_ids = list(clip_ids)
        stops = np.cumsum(np.asarray(lengths, dtype=np.int64))
        self.starts = np.concatenate([[0], stops[:-1]]).astype(np.int64)
        self.stops = stops
        self.total = int(stops[-1]) if len(stops) else 0
        self.shard_frames = shard_frames
        self.root = zarr.open_group(self.path, mode="w", attributes={"schema_version": SCHEMA_VERSION, **attrs})
        self.arrays = {}
        for name, spec in arrays.items():
            fill = np.nan if np.dtype(spec.dtype).kind == "f" else 0
            self.arrays[name] = self.root.create_array(
                name,
                shape=(self.total, *spec.tail_shape),
                chunks=(chunk_frames, *spec.tail_shape),
                shards=(shard_frames, *spec.tail_shape),  # the last shard may be partial
                dtype=spec.dtype,
                compressors=blosc_zstd(np.dtype(spec.dtype)),
                fill_value=fill,
                dimension_names=("frame", *spec.dims),
            )
        self._next_clip = 0
        self._buffer: dict[str, list[np.ndarray]] = {name: [] for name in arrays}
        self._buffer_start = 0  # frame index of the buffer's first row
        self._buffered = 0

    def write_clip(self, clip_index: int, data: Mapping[str, np.ndarray]) -> None:
        if clip_index != self._next_clip:
            raise ValueError(f"clips must be written in order: got {clip_index}, expected {self._next_clip}")
        n = int(self.stops[clip_index] - self.starts[clip_index])
        for name in self.arrays:
            block = np.asarray(data[name])
            if block.shape[0] != n:
                raise ValueError(f"clip {self.clip_ids[clip_index]} array {name}: {block.shape[0]} rows, expected {n}")
            self._buffer[name].append(block)
        self._buffered += n
        self._next_clip += 1
        self._flush(final=self._next_clip == len(self.clip_ids))

    def _flush(self, final: bool) -> None:
        """Write every complete shard held in the buffer (and the tail when final)."""
        shard_end = (self._buffer_start // self.shard_frames + 1) * self.shard_frames
        while self._buffered and (self._buffer_start + self._buffered >= shard_end or final):
            stop = min(shard_end, self._buffer_start + self._buffered)
            take = stop - self._buffer_start
            for name, arr in self.arrays.items():
                joined = np.concatenate(self._buffer[name], axis=0)
                arr[self._buffer_start:stop] = joined[:take]
                self._buffer[name] = [joined[take:]] if take < len(joined) else []
            self._buffer_start, self._buffered = stop, self._buffered - take
            shard_end += self.shard_frames

    def close(self) -> None:
        if self._next_clip != len(self.clip_ids):
            raise ValueError(f"only {self._next_clip} of {len(self.clip_ids)} clips were written")
        write_index(self.path, self.clip_ids, self.starts, self.stops)


def write_index(path: str | Path, clip_ids: list[str], starts: np.ndarray, stops: np.ndarray) -> None:
    """The per-clip index inside the store and mirrored as Parquet beside the arrays."""
    root = zarr.open_group(path, mode="a")
    ids = root.create_array("clip_id", shape=(len(clip_ids),), dtype=str, overwrite=True)
    ids[:] = np.asarray(clip_ids, dtype=object).astype(str) if clip_ids else np.asarray([], dtype=str)
    root.create_array("clip_start", data=np.asarray(starts, dtype=np.int64), overwrite=True)
    root.create_array("clip_stop", data=np.asarray(stops, dtype=np.int64), overwrite=True)
    write_parquet(pd.DataFrame({"clip_id": clip_ids, "start": starts, "stop": stops}), Path(path) / INDEX_FILE)


def open_store(path: str | Path) -> zarr.Group:
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise InputError(path, "not a Zarr store (no zarr.json)")
    return zarr.open_group(path, mode="r")


def read_index(path: str | Path) -> pd.DataFrame:
    """clip_id, start, stop for every clip of a store."""
    path = Path(path)
    if (path / INDEX_FILE).is_file():
        return pd.read_parquet(path / INDEX_FILE)
    root = open_store(path)
    return pd.DataFrame({"clip_id": root["clip_id"][:], "start": root["clip_start"][:], "stop": root["clip_stop"][:]})


def read_clip(path: str | Path, clip_id: str, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """All (or the named) per-frame arrays of one clip."""
    index = read_index(path).set_index("clip_id")
    if clip_id not in index.index:
        raise InputError(path, f"clip '{clip_id}' not in the store")
    start, stop = int(index.loc[clip_id, "start"]), int(index.loc[clip_id, "stop"])
    root = open_store(path)
    names = names or per_frame_arrays(root)
    return {name: root[name][start:stop] for name in names}


def list_arrays(root: zarr.Group) -> list[tuple[str, zarr.Array]]:
    """The store's arrays; the Parquet index mirror beside them is not a Zarr node, so hush that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
        return sorted(root.arrays(), key=lambda item: item[0])


def per_frame_arrays(root: zarr.Group) -> tuple[str, ...]:
    """Names of the arrays whose axis 0 is the frame axis."""
    return tuple(
        name for name, arr in list_arrays(root)
        if arr.metadata.dimension_names and arr.metadata.dimension_names[0] == "frame"
    )


def dir_size(path: str | Path) -> int:
    """Bytes of every file under path."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
