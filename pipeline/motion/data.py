"""Keypoints for Motion Reconstruction: the keypoint store in memory and the quadruple frame sampler.

`KeypointBank` holds keypoints.zarr (`value`, `jacobian` of every corpus and pseudo clip, about 240 bytes
a frame) and the neutral reference keypoints (p_neu, j_neu) per actor.

`QuadrupleFrames` turns rows of data/pseudo/pairs.parquet into store rows. For a quadruple
(x^{i,a}, x^{j,b}, y^{i,b}, y^{j,a}) and a target frame t of y^{i,b} (pipeline/lipsync/pseudo.py's alignment):
  x_ia   = x^{i,a}[y_ib_from_x_ia[t]]   the frame y^{i,b}[t] takes its expression and pose from
  x_jb_m = x^{j,b}[y_ib_from_x_jb[t]]   the frame at the same relative time in sentence b (its mouth)
  y_ib   = y^{i,b}[t]
and for a target frame t' of y^{j,a}, with the roles swapped:
  x_jb   = x^{j,b}[y_ja_from_x_jb[t']],  x_ia_m = x^{i,a}[y_ja_from_x_ia[t']],  y_ja = y^{j,a}[t'].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import InputError
from pipeline.core.store import open_store, read_index

ROLES = ("x_ia", "x_jb_m", "y_ib", "x_jb", "x_ia_m", "y_ja")


class KeypointBank:
    """keypoints.zarr in memory: per-frame value/jacobian, the clip index, the neutral keypoints per actor."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        root = open_store(self.path)
        for name in ("value", "jacobian", "reference_value", "reference_jacobian", "reference_actor"):
            if name not in root:
                raise InputError(self.path, f"no '{name}' array (re-run the keypoints stage)")
        self.value = np.asarray(root["value"][:], np.float32)
        self.jacobian = np.asarray(root["jacobian"][:], np.float32)
        self.num_kp = int(self.value.shape[1])
        self.index = read_index(self.path)
        self._spans = {c: (int(a), int(b)) for c, a, b in zip(self.index.clip_id, self.index.start, self.index.stop)}
        self.reference_value = np.asarray(root["reference_value"][:], np.float32)
        self.reference_jacobian = np.asarray(root["reference_jacobian"][:], np.float32)
        self.actors = [str(a) for a in root["reference_actor"][:]]
        self.actor_index = {a: i for i, a in enumerate(self.actors)}
        sources = root.attrs.get("sources") or []
        # the corpus's clips come first (row r = corpus frame r); extra stores (pseudo clips) follow
        self.corpus_clips = int(sources[0]["clips"]) if sources else len(self.index)
        self.attrs = root.attrs.asdict()

    def span(self, clip_id: str) -> tuple[int, int]:
        """(start, stop) store rows of a clip."""
        if clip_id not in self._spans:
            raise InputError(self.path, f"clip '{clip_id}' is not in the store (pseudo clips: keypoints.extra_frames"
                                        " must list data/pseudo/frames.zarr)")
        return self._spans[clip_id]

    def has_clip(self, clip_id: str) -> bool:
        return clip_id in self._spans

    def actor(self, actor: str) -> int:
        if actor not in self.actor_index:
            raise InputError(self.path, f"no neutral reference keypoints for actor '{actor}'")
        return self.actor_index[actor]

    def corpus_index(self) -> pd.DataFrame:
        """clip_id, start, stop of the corpus clips (the first `corpus_clips` entries)."""
        return self.index.iloc[: self.corpus_clips].reset_index(drop=True)

    def check_finite(self, rows: np.ndarray) -> None:
        """Training needs Jacobians: a store of a detector without them (NaN) is refused in one line."""
        bad = ~(np.isfinite(self.value[rows]).all(axis=(1, 2)) & np.isfinite(self.jacobian[rows]).all(axis=(1, 2, 3)))
        if bad.any():
            raise InputError(self.path, f"{int(bad.sum())} of the frames used have NaN keypoints or Jacobians "
                                        "(Motion Reconstruction needs a detector that estimates Jacobians)")


def select_quadruples(pairs: pd.DataFrame, sync: pd.DataFrame | None, use_filter: bool,
                      sync_path: str | Path = "sync.parquet") -> pd.DataFrame:
    """The quadruples to train on: those whose two pseudo clips (y^{i,b}, y^{j,a}) sync_filter kept, or all."""
    if not use_filter:
        return pairs.reset_index(drop=True)
    if sync is None or not {"pseudo_clip_id", "kept"} <= set(sync.columns):
        raise InputError(sync_path, "need columns pseudo_clip_id and kept (run sync_filter)")
    return pairs[kept_mask(pairs, sync)].reset_index(drop=True)


def counterfactual_targets(pairs: pd.DataFrame, has_clip) -> pd.DataFrame:
    """The quadruples with the corpus's exact counterfactual renders as targets wherever they exist.

    y^{i,b} becomes `<x^{i,a}>_cf<b>` (x^{i,a}'s expression, blink and pose track with sentence b's mouth,
    as long as audio b, so every alignment list still applies) and y^{j,a} becomes `<x^{j,b}>_cf<a>`,
    each only where `has_clip(id)`; a target without its render keeps the Wav2Lip clip. With
    `corpus.counterfactuals: 1` each clip has one render, so a quadruple has at most one exact target
    (quadruples with none are dropped); `counterfactuals: 2` (three sentences) makes both exact.
    """
    cf_ib = [f"{x}_cf{int(b):03d}" for x, b in zip(pairs.x_ia, pairs.sentence_b)]
    cf_ja = [f"{x}_cf{int(a):03d}" for x, a in zip(pairs.x_jb, pairs.sentence_a)]
    has_ib = np.array([has_clip(c) for c in cf_ib], dtype=bool)
    has_ja = np.array([has_clip(c) for c in cf_ja], dtype=bool)
    out = pairs.assign(y_ib=np.where(has_ib, cf_ib, pairs.y_ib), y_ja=np.where(has_ja, cf_ja, pairs.y_ja),
                       y_ib_exact=has_ib, y_ja_exact=has_ja)
    return out[has_ib | has_ja].reset_index(drop=True)


def label_weights(pairs: pd.DataFrame, sync: pd.DataFrame | None, use_filter: bool) -> dict[str, np.ndarray]:
    """Per quadruple, whether each target (y_ib, y_ja) is trusted as a label: 1 for an exact render
    (`y_*_exact` from `counterfactual_targets`), for a Wav2Lip clip the sync filter kept, and for every clip
    without the filter; 0 for a re-dub the filter rejected (it then drops out of every loss term it is in)."""
    kept = None
    if use_filter and sync is not None:
        kept = set(sync.pseudo_clip_id[sync.kept.astype(bool)])
    weights = {}
    for target in ("y_ib", "y_ja"):
        exact = pairs[f"{target}_exact"].to_numpy(bool) if f"{target}_exact" in pairs else np.zeros(len(pairs), bool)
        trusted = np.ones(len(pairs), bool) if kept is None else pairs[target].isin(kept).to_numpy()
        weights[target] = (exact | trusted).astype(np.float32)
    return weights


def kept_mask(pairs: pd.DataFrame, sync: pd.DataFrame) -> np.ndarray:
    """Per quadruple: both pseudo clips kept by sync_filter."""
    kept = set(sync.pseudo_clip_id[sync.kept.astype(bool)])
    return (pairs.y_ib.isin(kept) & pairs.y_ja.isin(kept)).to_numpy()


@dataclass
class QuadrupleFrames:
    """Quadruples as store rows: clip starts, target lengths, flattened alignment lists, actor indices."""

    starts: dict[str, np.ndarray]  # x_ia, x_jb, y_ib, y_ja -> (Q,) first store row of that clip
    lengths: dict[str, np.ndarray]  # y_ib, y_ja -> (Q,) frames
    offsets: dict[str, np.ndarray]  # y_ib, y_ja -> (Q,) where quadruple q's alignment lists start
    align: dict[str, np.ndarray]  # alignment column -> flattened int64
    actor: np.ndarray  # (Q,) index into KeypointBank.actors
    weight: dict[str, np.ndarray] | None = None  # y_ib, y_ja -> (Q,) label weights (label_weights); None = all 1

    @classmethod
    def build(cls, pairs: pd.DataFrame, bank: KeypointBank,
              weight: dict[str, np.ndarray] | None = None) -> QuadrupleFrames:
        if pairs.empty:
            raise InputError("pairs.parquet", "no quadruples to use")
        starts = {}
        for col in ("x_ia", "x_jb", "y_ib", "y_ja"):
            starts[col] = np.array([bank.span(c)[0] for c in pairs[col]], np.int64)
        lengths = {"y_ib": pairs.y_ib_frames.to_numpy(np.int64), "y_ja": pairs.y_ja_frames.to_numpy(np.int64)}
        for target in ("y_ib", "y_ja"):
            stored = np.array([bank.span(c)[1] - bank.span(c)[0] for c in pairs[target]], np.int64)
            if not np.array_equal(stored, lengths[target]):
                raise InputError(bank.path, f"pseudo clip lengths differ from pairs.parquet's {target}_frames "
                                            "(keypoints computed on another pseudo_pairs run?)")
        offsets, align = {}, {}
        for target, columns in (("y_ib", ("y_ib_from_x_ia", "y_ib_from_x_jb")),
                                ("y_ja", ("y_ja_from_x_jb", "y_ja_from_x_ia"))):
            offsets[target] = np.concatenate([[0], np.cumsum(lengths[target])[:-1]]).astype(np.int64)
            for col in columns:
                flat = np.concatenate([np.asarray(v, np.int64) for v in pairs[col]])
                if len(flat) != lengths[target].sum():
                    raise InputError("pairs.parquet", f"column {col}: list lengths differ from {target}_frames")
                align[col] = flat
        actor = np.array([bank.actor(a) for a in pairs.actor], np.int64)
        if weight is not None and any(len(weight[t]) != len(pairs) for t in ("y_ib", "y_ja")):
            raise ValueError("label weights need one entry per quadruple")
        return cls(starts, lengths, offsets, align, actor, weight)

    def __len__(self) -> int:
        return len(self.actor)

    def target_rows(self, target: str, q: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Store rows (expression source, mouth source, pseudo label) of frame t of target `y_ib` or `y_ja`."""
        a = self.offsets[target][q] + t
        if target == "y_ib":
            return (self.starts["x_ia"][q] + self.align["y_ib_from_x_ia"][a],
                    self.starts["x_jb"][q] + self.align["y_ib_from_x_jb"][a], self.starts["y_ib"][q] + t)
        return (self.starts["x_jb"][q] + self.align["y_ja_from_x_jb"][a],
                self.starts["x_ia"][q] + self.align["y_ja_from_x_ia"][a], self.starts["y_ja"][q] + t)

    def rows(self, q: np.ndarray, t_ib: np.ndarray, t_ja: np.ndarray) -> dict[str, np.ndarray]:
        """Store rows of the six frames (ROLES) for quadruples q at target frames t_ib of y^{i,b}, t_ja of y^{j,a}."""
        x_ia, x_jb_m, y_ib = self.target_rows("y_ib", q, t_ib)
        x_jb, x_ia_m, y_ja = self.target_rows("y_ja", q, t_ja)
        return {"x_ia": x_ia, "x_jb_m": x_jb_m, "y_ib": y_ib, "x_jb": x_jb, "x_ia_m": x_ia_m, "y_ja": y_ja}

    def sample(self, rng: np.random.Generator, batch: int
               ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
        """Random quadruples (with replacement) and a uniform target frame of each pseudo clip:
        (rows, actor, label weights {y_ib, y_ja: (batch,)})."""
        q = rng.integers(len(self), size=batch)
        t_ib = (rng.random(batch) * self.lengths["y_ib"][q]).astype(np.int64)
        t_ja = (rng.random(batch) * self.lengths["y_ja"][q]).astype(np.int64)
        if self.weight is None:
            weight = {t: np.ones(batch, np.float32) for t in ("y_ib", "y_ja")}
        else:
            weight = {t: self.weight[t][q] for t in ("y_ib", "y_ja")}
        return self.rows(q, t_ib, t_ja), self.actor[q], weight

    def all_frames(self, target: str, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(quadruple, t) for every stride-th frame of every quadruple's y^{i,b} (`y_ib`) or y^{j,a} (`y_ja`)."""
        qs, ts = [], []
        for q, n in enumerate(self.lengths[target]):
            t = np.arange(0, int(n), max(stride, 1))
            qs.append(np.full(len(t), q, np.int64))
            ts.append(t)
        return np.concatenate(qs), np.concatenate(ts)

    def used_rows(self) -> np.ndarray:
        """Every store row any sample can touch (to refuse NaN keypoints before training)."""
        parts = []
        for target in ("y_ib", "y_ja"):
            parts += list(self.target_rows(target, *self.all_frames(target)))
        return np.unique(np.concatenate(parts))


def read_pairs(pseudo_dir: str | Path) -> pd.DataFrame:
    path = Path(pseudo_dir) / "pairs.parquet"
    if not path.is_file():
        raise InputError(path, "quadruple table not found (run pseudo_pairs first)")
    return pd.read_parquet(path)


def read_sync(pseudo_dir: str | Path) -> pd.DataFrame:
    path = Path(pseudo_dir) / "sync.parquet"
    if not path.is_file():
        raise InputError(path, "sync scores not found (run sync_filter first)")
    sync = pd.read_parquet(path)
    if not {"pseudo_clip_id", "kept"} <= set(sync.columns):
        raise InputError(path, "need columns pseudo_clip_id and kept")
    return sync


__all__ = ["KeypointBank", "QuadrupleFrames", "ROLES", "counterfactual_targets", "kept_mask", "label_weights", "read_pairs", "read_sync", "select_quadruples"]
