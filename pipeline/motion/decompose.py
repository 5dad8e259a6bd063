"""Motion decomposition, the decompose stage's work (paper 3.3 "pseudo labels"): f_e and f_m of every frame of every
clip of one set (the corpus, or the wide pre-training set), encoded by the Motion Reconstruction model relative to
the clip's actor's neutral keypoints, into data/features/motion.zarr (corpus: the first entries of the keypoint
store's index) or wide_motion.zarr (the wide set's clips, wherever keypoints.extra_frames put them).

Clip groups are mapped over Dask workers by `decompose_task` (a top-level function; one model load per worker
process); this process is the one writer.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import BaseParams, DecomposeParams, recorded_params
from pipeline.core.errors import InputError
from pipeline.core.parallel import dask_client, ordered_map
from pipeline.core.precision import pick_device
from pipeline.core.store import ArraySpec, RaggedStoreWriter, atomic_output, open_store
from pipeline.corpus.manifest import read_manifest
from pipeline.models.motion import MotionNet, encode_frames, load_motion
from pipeline.motion.data import KeypointBank

SCHEMA = "emmn.motion/v1"


@functools.lru_cache(maxsize=2)
def _model(path: str, mtime: float, device: str) -> MotionNet:
    """One load per worker process (keyed by mtime so a rewritten file is re-read)."""
    return load_motion(path).to(pick_device(device))


def decompose_task(task: tuple) -> list[dict[str, np.ndarray]]:
    """Worker: (f_e, f_m) of a group of clips (start, stop, reference index of the clip's actor), one dict
    per clip; each clip is encoded relative to its actor's neutral keypoints when the model wants that."""
    model_path, kp_store, clips, batch_size, single_thread, device = task
    import torch

    if single_thread:
        torch.set_num_threads(1)
    net = _model(model_path, Path(model_path).stat().st_mtime, device)
    root = open_store(kp_store)
    start, stop = clips[0][0], clips[-1][1]  # the group's clips are consecutive: one read
    value, jacobian = root["value"][start:stop], root["jacobian"][start:stop]
    ref_value, ref_jacobian = root["reference_value"][:], root["reference_jacobian"][:]
    out = []
    for a, b, actor in clips:
        f_e, f_m = encode_frames(net, value[a - start:b - start], jacobian[a - start:b - start], ref_value[actor],
                                 ref_jacobian[actor], batch_size)
        out.append({"f_e": f_e, "f_m": f_m})
    return out


def group_tasks(clips: list[tuple[int, int, int]], model_path: Path, kp_store: Path, p: DecomposeParams,
                single_thread: bool, device: str) -> list[tuple]:
    """Consecutive clips (start, stop, actor) grouped until a group holds `task_frames` frames (order kept)."""
    tasks, group, frames = [], [], 0
    for clip in clips:
        group.append(clip)
        frames += clip[1] - clip[0]
        if frames >= p.task_frames:
            tasks.append((str(model_path), str(kp_store), group, p.batch_size, single_thread, device))
            group, frames = [], 0
    if group:
        tasks.append((str(model_path), str(kp_store), group, p.batch_size, single_thread, device))
    return tasks


def manifest_clips(bank: KeypointBank, corpus_dir: Path) -> pd.DataFrame:
    """clip_id, start, stop (keypoint store rows) of the clips of `corpus_dir`'s manifest, in store order.

    The MEAD-shaped corpus's clips are the store's first entries (row r = corpus frame r) and must all be in its
    manifest; a set listed in `keypoints.extra_frames` (the wide set) is found anywhere after them."""
    manifest_path = Path(corpus_dir) / "manifest.parquet"
    names = set(read_manifest(corpus_dir).clip_id)
    corpus = bank.corpus_index()
    if names & set(corpus.clip_id):
        if len(corpus) and int(corpus.start.iloc[0]) != 0:
            raise InputError(bank.path, "the corpus clips must come first in the keypoint store")
        missing = [c for c in corpus.clip_id if c not in names]
        if missing:
            raise InputError(manifest_path, f"clip '{missing[0]}' of the keypoint store is not in the manifest "
                                            "(keypoints of another corpus?)")
        return corpus
    found = bank.index[bank.index.clip_id.isin(names)].reset_index(drop=True)
    if found.empty:
        raise InputError(bank.path, f"no clip of {manifest_path} is in the keypoint store (keypoints.extra_frames "
                                    f"must list {Path(corpus_dir) / 'frames.zarr'})")
    return found


def build_motion_store(kp_store: Path, model_path: Path, corpus_dir: Path, out: Path, base: BaseParams,
                       p: DecomposeParams) -> int:
    """Write motion.zarr atomically; return the number of frames."""
    net = load_motion(model_path)  # a bad checkpoint fails here, in one line, before any worker starts
    bank = KeypointBank(kp_store)
    corpus = manifest_clips(bank, corpus_dir)
    starts, stops = corpus.start.to_numpy(np.int64), corpus.stop.to_numpy(np.int64)
    actor_of = dict(zip(*read_manifest(corpus_dir)[["clip_id", "actor"]].to_numpy().T))
    clips = [(int(a), int(b), bank.actor(actor_of[c])) for c, a, b in zip(corpus.clip_id, starts, stops)]
    root = open_store(kp_store)
    attrs = {"schema": SCHEMA, "stage": "decompose",
             "params": recorded_params("decompose", base, p),
             "model": {"path": str(model_path), "step": net.step, "config": net.config.as_dict(),
                       "train_params": net.metrics.get("train_params")},
             "keypoints": {"path": str(kp_store), "params": root.attrs.get("params")}, "set": str(corpus_dir),
             "f_e": "expression motion feature E_e(p, j) (layer-normalised)",
             "f_m": "mouth motion feature E_m(p, j) (layer-normalised)"}
    with atomic_output(out) as tmp:
        writer = RaggedStoreWriter(
            tmp, list(corpus.clip_id), list((stops - starts).tolist()),
            {"f_e": ArraySpec((net.config.expression_dim,), "float32", ("feature",)),
             "f_m": ArraySpec((net.config.mouth_dim,), "float32", ("feature",))},
            attrs=attrs, chunk_frames=p.chunk_frames, shard_frames=p.shard_frames)
        with dask_client(base.workers, base.scheduler_address) as client:
            tasks = group_tasks(clips, model_path, kp_store, p, single_thread=client is not None, device=base.device)
            clip = 0
            for results in ordered_map(decompose_task, tasks, client=client, window=2 * max(base.workers, 1),
                                       description="decompose: clip groups"):
                for result in results:
                    writer.write_clip(clip, result)
                    clip += 1
        writer.close()
    return int((stops - starts).sum())
