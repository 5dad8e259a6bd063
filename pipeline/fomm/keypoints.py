"""E_k extraction (paper 3.2), the keypoints stage's work: FOMM keypoints and Jacobians of every corpus clip and of
the clips of each `keypoints.extra_frames` store (pseudo clips, the wide pre-training set), plus each actor's neutral
reference keypoints (corpus actors, then the actors of every extra store with neutral references), into
data/features/keypoints.zarr; then the FOMM report (pipeline.fomm.report).

Clip groups are mapped over Dask workers by `keypoints_task` (a top-level function); this process is the ONE writer,
so no shard ever has two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from pipeline.core.config import BaseParams, KeypointsParams, recorded_params
from pipeline.core.errors import InputError
from pipeline.core.parallel import dask_client, ordered_map
from pipeline.core.precision import announce_precision, pick_device, resolve_precision
from pipeline.core.store import (
    ArraySpec,
    RaggedStoreWriter,
    atomic_output,
    blosc_zstd,
    open_store,
    read_index,
)
from pipeline.fomm.io import detect_keypoints, load_fomm
from pipeline.fomm.report import build_fomm_report, write_report

SCHEMA = "emmn.keypoints/v1"


def keypoints_task(task: tuple) -> list[dict[str, np.ndarray]]:
    """Worker: keypoints of a group of clips (row ranges of one frames store), one dict per clip.

    The checkpoint is loaded once per group; in a Dask worker torch runs on one thread (two
    processes with two threads each are slower than one each on the 2-core machines).
    """
    model_path, frames_path, ranges, batch_size, bf16, single_thread, device = task
    import torch

    if single_thread:
        torch.set_num_threads(1)
    model = load_fomm(model_path)
    model.kp_detector.to(pick_device(device))
    frames = open_store(frames_path)["frames"]
    out = []
    for start, stop in ranges:
        value, jacobian = detect_keypoints(model.kp_detector, frames[start:stop], model.config.image_size,
                                           batch_size, bf16)
        out.append({"value": value, "jacobian": jacobian})
    return out


def clip_sources(corpus_dir: Path, extra: tuple[str, ...]) -> list[tuple[Path, list[str], np.ndarray, np.ndarray]]:
    """(frames store, clip ids, starts, stops) for the corpus and each extra store; clip ids must be unique."""
    stores = [corpus_dir / "frames.zarr", *(Path(e) for e in extra)]
    sources, seen = [], set()
    for store in stores:
        root = open_store(store)
        if "frames" not in root:
            raise InputError(store, "no 'frames' array")
        index = read_index(store)
        clash = sorted(set(index.clip_id) & seen)
        if clash:
            raise InputError(store, f"clip id '{clash[0]}' is already in an earlier store")
        seen.update(index.clip_id)
        sources.append((store, list(index.clip_id), index.start.to_numpy(), index.stop.to_numpy()))
    return sources


def group_tasks(sources: list, model_path: Path, p: KeypointsParams, single_thread: bool, device: str,
                bf16: bool = False) -> list[tuple]:
    """Consecutive clips of one store grouped until a group holds `task_frames` frames (clip order kept)."""
    tasks = []
    for store, _, starts, stops in sources:
        group, frames = [], 0
        for start, stop in zip(starts.tolist(), stops.tolist()):
            group.append((start, stop))
            frames += stop - start
            if frames >= p.task_frames:
                tasks.append((str(model_path), str(store), group, p.batch_size, bf16, single_thread, device))
                group, frames = [], 0
        if group:
            tasks.append((str(model_path), str(store), group, p.batch_size, bf16, single_thread, device))
    return tasks


def reference_sources(corpus_dir: Path, extra: tuple[str, ...]) -> list[Path]:
    """The frame stores whose actors' neutral frames are read: the corpus (required) and every extra store that
    carries `reference_frames` + `reference_actor` (the wide set does; pseudo clips are corpus actors)."""
    corpus = Path(corpus_dir) / "frames.zarr"
    root = open_store(corpus)
    if "reference_frames" not in root or "reference_actor" not in root:
        raise InputError(corpus, "no reference_frames / reference_actor (the neutral frame per actor)")
    found = [corpus]
    for store in (Path(e) for e in extra):
        root = open_store(store)
        if "reference_frames" in root and "reference_actor" in root:
            found.append(store)
    return found


def write_reference_keypoints(store: Path, corpus_dir: Path, model, batch_size: int, device: str,
                              extra: tuple[str, ...] = ()) -> None:
    """`reference_value`, `reference_jacobian`, `reference_actor`: keypoints of each actor's neutral frame, the
    corpus's actors first, then those of each extra store with references (actor names must be unique)."""
    model.kp_detector.to(pick_device(device))
    values, jacobians, actors = [], [], []
    for frames_path in reference_sources(corpus_dir, extra):
        root = open_store(frames_path)
        names = [str(a) for a in root["reference_actor"][:]]
        clash = sorted(set(names) & set(actors))
        if clash:
            raise InputError(frames_path, f"actor '{clash[0]}' already has a neutral reference in an earlier store")
        value, jacobian = detect_keypoints(model.kp_detector, root["reference_frames"][:], model.config.image_size,
                                           batch_size)
        values.append(value)
        jacobians.append(jacobian)
        actors += names
    value, jacobian = np.concatenate(values), np.concatenate(jacobians)
    root = zarr.open_group(store, mode="a")
    root.create_array("reference_value", data=value, compressors=blosc_zstd(value.dtype),
                      dimension_names=("actor", "keypoint", "xy"))
    root.create_array("reference_jacobian", data=jacobian, compressors=blosc_zstd(jacobian.dtype),
                      dimension_names=("actor", "keypoint", "row", "col"))
    ids = root.create_array("reference_actor", shape=(len(actors),), dtype=str, dimension_names=("actor",))
    ids[:] = np.asarray(actors)


def build_keypoints(corpus_dir: Path, model_path: Path, out: Path, base: BaseParams, p: KeypointsParams) -> int:
    """Write keypoints.zarr atomically; return the number of frames."""
    model = load_fomm(model_path)
    sources = clip_sources(corpus_dir, p.extra_frames)
    clip_ids = [c for _, ids, _, _ in sources for c in ids]
    lengths = [int(e - s) for _, _, starts, stops in sources for s, e in zip(starts, stops)]
    num_kp = model.config.num_kp
    precision = resolve_precision(base.precision, pick_device(base.device))
    announce_precision(precision, "keypoints")
    attrs = {"schema": SCHEMA, "stage": "keypoints", "precision": precision.resolved,
             "params": recorded_params("keypoints", base, p),
             "model": {"path": str(model_path), "step": model.step, "config": model.config.to_dict()},
             "sources": [{"store": str(store), "clips": len(ids)} for store, ids, _, _ in sources],
             "value": "keypoint x, y in [-1, 1] (FOMM heatmap grid, both ends included)",
             "jacobian": "2x2 local affine per keypoint, row-major (a b; c d); NaN if the model estimates none"}
    with atomic_output(out) as tmp:
        writer = RaggedStoreWriter(
            tmp, clip_ids, lengths,
            {"value": ArraySpec((num_kp, 2), "float32", ("keypoint", "xy")),
             "jacobian": ArraySpec((num_kp, 2, 2), "float32", ("keypoint", "row", "col"))},
            attrs=attrs, chunk_frames=p.chunk_frames, shard_frames=p.shard_frames)
        with dask_client(base.workers, base.scheduler_address) as client:
            tasks = group_tasks(sources, model_path, p, single_thread=client is not None, device=base.device,
                                bf16=precision.bf16)
            clip = 0
            for results in ordered_map(keypoints_task, tasks, client=client, window=2 * max(base.workers, 1),
                                       description="keypoints: clip groups"):
                for result in results:
                    writer.write_clip(clip, result)
                    clip += 1
        writer.close()
        write_reference_keypoints(tmp, corpus_dir, model, p.batch_size, base.device, p.extra_frames)
    return int(sum(lengths))


def run_keypoints(corpus_dir: Path, model_path: Path, out: Path, report: Path, video: Path, strip: Path,
                  base: BaseParams, p: KeypointsParams) -> dict:
    """The keypoints store, then the FOMM report (returned) with its video and PNG strip."""
    frames = build_keypoints(corpus_dir, model_path, out, base, p)
    model = load_fomm(model_path)
    device = pick_device(base.device)
    model.kp_detector.to(device)
    model.generator.to(device)
    summary = build_fomm_report(model, corpus_dir, out, base, p, video_path=video, strip_png=strip)
    summary["info"]["keypoint_frames"] = frames
    write_report(summary, report)
    return summary
