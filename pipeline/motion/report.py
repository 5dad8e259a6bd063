"""data/reports/motion.json: how well Motion Reconstruction rebuilds keypoints and what f_e / f_m carry.

Distances are the loss's ||(p, j) - (p', j')||_2 (pipeline/motion/losses.py: per keypoint the L2 norm of
the value and Jacobian differences, mean over keypoints and frames); `*_value_px` is the mean keypoint
position error alone in pixels of the FOMM input image. Every measurement uses every `stride`-th frame.

recon (each decoded with the actor's neutral keypoints (p_neu, j_neu)):
* self: held-out actors' real clips, D(E_e(x), E_m(x)) vs E_k(x). `self_baseline_neutral`: the neutral
  keypoints themselves vs E_k(x) (what a decoder that ignores both features would score).
* cross_heldout: held-out actors (they have no pseudo pairs): for each real clip x^{i,a} with a
  non-neutral emotion-level i and the neutral clip x^{neu,a} of the same actor and sentence,
  D(E_e(x^{i,a}[t]), E_m(x^{neu,a}[u])) vs E_k(x^{i,a}[t]), u = the frame at the same relative time
  (pipeline.lipsync.pseudo.relative_time_indices). The mouth comes from another clip that says the same words,
  so a disentangled model keeps the error close to `self`. `cross_heldout_copy_mouth_source`: E_k(x^{neu,a}[u])
  itself vs the target (no expression transfer).
* cross, cross_vs_counterfactual: training actors' quadruples (pseudo pairs exist only for them), on the
  quadruples the model did NOT train on (those sync_filter rejected) when there are any, else on all of
  them (`info.cross_set` says which). cross = D(f_e of the expression source, f_m of the mouth source)
  vs E_k(y) (the pseudo label); cross_vs_counterfactual = the same prediction vs E_k of the corpus's
  counterfactual render of y (the exact target pseudo labels approximate), on frames t < min(T_a, T_b)
  where the counterfactual keeps the source's expression and pose. Baselines on those frames:
  `pseudo_label_vs_counterfactual` (E_k(y) vs E_k(cf): the label's own error) and
  `cross_vs_counterfactual_copy_source` (E_k of the expression source frame: the mouth left unchanged).

probe (linear probes fitted on training actors' real clips, scored on held-out actors' real clips,
penalty picked by leave-one-actor-out cross-validation on the training actors; features standardised):
* emotion_acc_from_fe / _fm / _kp: accuracy of a ridge classifier (one-hot targets, arg-max) of the
  emotion category from f_e, f_m, or the raw keypoints (values + Jacobians); `emotion_chance`: the most
  frequent held-out class's share.
* mouth_r2_from_fm / _fe / _kp: ridge R^2 of the corpus's per-frame mouth opening (`mouth_open_param`,
  jaw_open: visemes plus the emotion's mouth offset); viseme_r2_from_*: mean R^2 of the speech-only
  viseme controls (`viseme_params`). NaN where the corpus has no such controls (MEAD).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.config import MotionReportParams
from pipeline.core.errors import InputError
from pipeline.core.probes import fit_ridge, grouped_probe_r2
from pipeline.core.store import open_store, read_index, report_values, write_json
from pipeline.lipsync.pseudo import relative_time_indices
from pipeline.models.motion import MotionNet, decode_frames, encode_frames, load_motion
from pipeline.motion.data import KeypointBank, QuadrupleFrames, kept_mask, read_pairs

NEUTRAL = "neutral"

# ----------------------------------------------------------------------------------------- distances


def motion_errors(value: np.ndarray, jacobian: np.ndarray, target_value: np.ndarray, target_jacobian: np.ndarray
                  ) -> np.ndarray:
    """Per frame: mean over keypoints of sqrt(|dp|^2 + |dj|_F^2) (numpy twin of motion_distance, weight 1)."""
    dv = (value - target_value).reshape(len(value), value.shape[1], -1)
    dj = (jacobian - target_jacobian).reshape(len(value), value.shape[1], -1)
    return np.sqrt((dv ** 2).sum(-1) + (dj ** 2).sum(-1)).mean(axis=1)


def value_errors_px(value: np.ndarray, target_value: np.ndarray, image_size: int) -> np.ndarray:
    """Per frame: mean keypoint position error in pixels ([-1, 1] spans image_size - 1 pixels)."""
    return np.linalg.norm(value - target_value, axis=-1).mean(axis=1) * (image_size - 1) / 2


class Reconstructor:
    """Encode / decode rows of a keypoint store with one MotionNet and score against other rows."""

    def __init__(self, net: MotionNet, bank: KeypointBank):
        self.net, self.bank = net, bank
        config = (bank.attrs.get("model") or {}).get("config") or {}
        self.image_size = int(config.get("image_size", 2))

    def predict(self, expression_rows: np.ndarray, mouth_rows: np.ndarray, actors: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """D(E_e(row_e), E_m(row_m), neutral of the actor) for every row pair."""
        b = self.bank
        neutral = b.reference_value[actors], b.reference_jacobian[actors]
        f_e, _ = encode_frames(self.net, b.value[expression_rows], b.jacobian[expression_rows], *neutral)
        _, f_m = encode_frames(self.net, b.value[mouth_rows], b.jacobian[mouth_rows], *neutral)
        return decode_frames(self.net, f_e, f_m, *neutral)

    def errors(self, value: np.ndarray, jacobian: np.ndarray, target_rows: np.ndarray) -> dict[str, np.ndarray]:
        b = self.bank
        return {"": motion_errors(value, jacobian, b.value[target_rows], b.jacobian[target_rows]),
                "_value_px": value_errors_px(value, b.value[target_rows], self.image_size)}

    def copy_errors(self, rows: np.ndarray, target_rows: np.ndarray) -> dict[str, np.ndarray]:
        return self.errors(self.bank.value[rows], self.bank.jacobian[rows], target_rows)


def _strided(start: int, stop: int, stride: int) -> np.ndarray:
    return np.arange(start, stop, max(stride, 1), dtype=np.int64)


def _means(prefix: str, errors: dict[str, np.ndarray]) -> dict[str, float]:
    return {f"{prefix}{suffix}": (float(v.mean()) if len(v) else math.nan) for suffix, v in errors.items()}


# ------------------------------------------------------------------------------------ held-out actors


def heldout_self(rec: Reconstructor, manifest: pd.DataFrame, stride: int) -> tuple[dict[str, float], int]:
    """recon.self and its neutral baseline on held-out actors' real clips."""
    clips = manifest[(manifest.split == "test") & (manifest.kind == "real")]
    rows, actors = [], []
    for clip in clips.itertuples():
        start, stop = rec.bank.span(clip.clip_id)
        r = _strided(start, stop, stride)
        rows.append(r)
        actors.append(np.full(len(r), rec.bank.actor(clip.actor)))
    if not rows:
        return {k: math.nan for k in ("self", "self_value_px", "self_baseline_neutral",
                                      "self_baseline_neutral_value_px")}, 0
    rows, actors = np.concatenate(rows), np.concatenate(actors)
    value, jacobian = rec.predict(rows, rows, actors)
    out = _means("self", rec.errors(value, jacobian, rows))
    b = rec.bank
    out.update(_means("self_baseline_neutral", rec.errors(b.reference_value[actors], b.reference_jacobian[actors],
                                                          rows)))
    return out, int(len(rows))


def heldout_cross_rows(bank: KeypointBank, manifest: pd.DataFrame, stride: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(target = expression rows, mouth rows, actors): x^{i,a}[t] with x^{neu,a} at the same relative time."""
    real = manifest[(manifest.split == "test") & (manifest.kind == "real")]
    neutral = real[real.emotion == NEUTRAL].drop_duplicates(["actor", "sentence_id"]).set_index(
        ["actor", "sentence_id"])
    targets, mouths, actors = [], [], []
    for clip in real[real.emotion != NEUTRAL].itertuples():
        if (clip.actor, clip.sentence_id) not in neutral.index:
            continue
        source = neutral.loc[(clip.actor, clip.sentence_id)]
        t_start, t_stop = bank.span(clip.clip_id)
        m_start, m_stop = bank.span(source.clip_id)
        t = np.arange(0, t_stop - t_start, max(stride, 1))
        u = relative_time_indices(m_stop - m_start, t_stop - t_start)[t]
        targets.append(t_start + t)
        mouths.append(m_start + u)
        actors.append(np.full(len(t), bank.actor(clip.actor)))
    if not targets:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    return np.concatenate(targets), np.concatenate(mouths), np.concatenate(actors)


def heldout_cross(rec: Reconstructor, manifest: pd.DataFrame, stride: int) -> tuple[dict[str, float], int]:
    targets, mouths, actors = heldout_cross_rows(rec.bank, manifest, stride)
    if not len(targets):
        return {k: math.nan for k in ("cross_heldout", "cross_heldout_value_px", "cross_heldout_copy_mouth_source",
                                      "cross_heldout_copy_mouth_source_value_px")}, 0
    value, jacobian = rec.predict(targets, mouths, actors)
    out = _means("cross_heldout", rec.errors(value, jacobian, targets))
    out.update(_means("cross_heldout_copy_mouth_source", rec.copy_errors(mouths, targets)))
    return out, int(len(targets))


# --------------------------------------------------------------------------- training-actor quadruples


def evaluation_quadruples(pairs: pd.DataFrame, sync: pd.DataFrame | None, trained_with_filter: bool
                          ) -> tuple[pd.DataFrame, str]:
    """The quadruples the model did not train on when there are any, else all; with a description."""
    if trained_with_filter and sync is not None:
        unseen = ~kept_mask(pairs, sync)
        if unseen.any():
            return (pairs[unseen].reset_index(drop=True),
                    f"{int(unseen.sum())} quadruples not trained on (a pseudo clip rejected by sync_filter)")
    return pairs.reset_index(drop=True), f"all {len(pairs)} quadruples (every one was trained on)"


def counterfactual_spans(bank: KeypointBank, clips: pd.DataFrame, pseudo_ids: pd.Series
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Per pseudo clip: first store row of its counterfactual render (-1: none) and how many leading frames
    match it (min(T_a, T_b): beyond the source's length the pseudo clip repeats source frames while the
    render's expression track goes on). `clips` is clips.parquet indexed by pseudo_clip_id."""
    starts, limits = [], []
    for clip_id in pseudo_ids:
        row = clips.loc[clip_id] if clip_id in clips.index else None
        cf = None if row is None else row.get("counterfactual_clip_id")
        if isinstance(cf, str) and bank.has_clip(cf):
            starts.append(bank.span(cf)[0])
            limits.append(min(int(row["source_frames"]), int(row["frames"])))
        else:
            starts.append(-1)
            limits.append(0)
    return np.asarray(starts, np.int64), np.asarray(limits, np.int64)


def quadruple_cross(rec: Reconstructor, pairs: pd.DataFrame, clips: pd.DataFrame, stride: int
                    ) -> tuple[dict[str, float], dict[str, int]]:
    """recon.cross (vs pseudo labels) and recon.cross_vs_counterfactual (+ baselines) on `pairs`."""
    keys = ("cross", "cross_value_px", "cross_vs_counterfactual", "cross_vs_counterfactual_value_px",
            "cross_vs_counterfactual_copy_source", "cross_vs_counterfactual_copy_source_value_px",
            "pseudo_label_vs_counterfactual", "pseudo_label_vs_counterfactual_value_px")
    if pairs.empty:
        return {k: math.nan for k in keys}, {"cross_frames": 0, "counterfactual_frames": 0}
    bank = rec.bank
    quads = QuadrupleFrames.build(pairs, bank)
    info = clips.set_index("pseudo_clip_id")
    parts: dict[str, list[np.ndarray]] = {}
    for target in ("y_ib", "y_ja"):
        q, t = quads.all_frames(target, stride)
        expression, mouth, label = quads.target_rows(target, q, t)
        cf_start, limit = counterfactual_spans(bank, info, pairs[target])
        cf_start, limit = cf_start[q], limit[q]
        for name, value in (("expression", expression), ("mouth", mouth), ("label", label),
                            ("actor", quads.actor[q]), ("cf", np.where(t < limit, cf_start + t, -1))):
            parts.setdefault(name, []).append(value)
    rows = {k: np.concatenate(v) for k, v in parts.items()}
    value, jacobian = rec.predict(rows["expression"], rows["mouth"], rows["actor"])
    out = _means("cross", rec.errors(value, jacobian, rows["label"]))
    has_cf = rows["cf"] >= 0
    cf = rows["cf"][has_cf]
    if has_cf.any():
        out.update(_means("cross_vs_counterfactual", rec.errors(value[has_cf], jacobian[has_cf], cf)))
        out.update(_means("cross_vs_counterfactual_copy_source", rec.copy_errors(rows["expression"][has_cf], cf)))
        out.update(_means("pseudo_label_vs_counterfactual", rec.copy_errors(rows["label"][has_cf], cf)))
    else:
        out.update({k: math.nan for k in keys[2:]})
    return out, {"cross_frames": int(len(value)), "counterfactual_frames": int(has_cf.sum())}


# --------------------------------------------------------------------------------------------- probes


def ridge_classifier(train_x: np.ndarray, train_labels: np.ndarray, alpha: float):
    """Ridge regression on one-hot targets (standardised features); predict = arg-max class."""
    classes = np.unique(train_labels)
    onehot = (train_labels[:, None] == classes[None, :]).astype(np.float64)
    probe = fit_ridge(train_x, onehot, alpha)
    return lambda x: classes[np.argmax(probe.predict(x), axis=1)]


def classifier_accuracy(train_x: np.ndarray, train_labels: np.ndarray, train_groups: np.ndarray,
                        test_x: np.ndarray, test_labels: np.ndarray, alphas: tuple[float, ...]) -> tuple[float, float]:
    """(held-out accuracy, alpha): alpha by leave-one-group-out accuracy on the training rows, then refitted."""
    keep = np.isfinite(train_x).all(axis=1)
    train_x, train_labels, train_groups = train_x[keep], train_labels[keep], train_groups[keep]
    test_keep = np.isfinite(test_x).all(axis=1)
    test_x, test_labels = test_x[test_keep], test_labels[test_keep]
    if len(np.unique(train_labels)) < 2 or len(test_x) == 0:
        return math.nan, math.nan
    groups = np.unique(train_groups)
    best_alpha, best = float(alphas[0]), -1.0
    if len(groups) >= 2 and len(alphas) >= 2:
        for alpha in alphas:
            scores = []
            for g in groups:
                held = train_groups == g
                predict = ridge_classifier(train_x[~held], train_labels[~held], alpha)
                scores.append(float(np.mean(predict(train_x[held]) == train_labels[held])))
            if np.mean(scores) > best:
                best_alpha, best = float(alpha), float(np.mean(scores))
    predict = ridge_classifier(train_x, train_labels, best_alpha)
    return float(np.mean(predict(test_x) == test_labels)), best_alpha


def probe_rows(bank: KeypointBank, manifest: pd.DataFrame, split: str, stride: int) -> pd.DataFrame:
    """One row per probed frame of the split's real clips: store row (= corpus row), actor, emotion."""
    clips = manifest[(manifest.split == split) & (manifest.kind == "real")]
    parts = []
    for clip in clips.itertuples():
        start, stop = bank.span(clip.clip_id)
        rows = _strided(start, stop, stride)
        parts.append(pd.DataFrame({"row": rows, "actor": clip.actor, "emotion": clip.emotion}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["row", "actor", "emotion"])


def linear_probes(bank: KeypointBank, f_e: np.ndarray, f_m: np.ndarray, manifest: pd.DataFrame,
                  render_params: np.ndarray | None, render_names: list[str], p: MotionReportParams) -> dict[str, float]:
    """Emotion accuracy and mouth / viseme R^2 from f_e, f_m and the raw keypoints (train actors -> held out)."""
    data = {split: probe_rows(bank, manifest, split, p.stride) for split in ("train", "test")}
    alphas = tuple(p.probe_alphas)
    out: dict[str, float] = {}
    targets = {"mouth": [p.mouth_open_param], "viseme": list(p.viseme_params)}
    columns = {name: [render_names.index(c) for c in cols if c in render_names] for name, cols in targets.items()}

    def features(kind: str, rows: np.ndarray) -> np.ndarray:
        if kind == "fe":
            return f_e[rows]
        if kind == "fm":
            return f_m[rows]
        return np.concatenate([bank.value[rows].reshape(len(rows), -1), bank.jacobian[rows].reshape(len(rows), -1)],
                              axis=1)

    train, test = data["train"], data["test"]
    train_rows, test_rows = train.row.to_numpy(np.int64), test.row.to_numpy(np.int64)
    for kind in ("fe", "fm", "kp"):
        x_train, x_test = features(kind, train_rows), features(kind, test_rows)
        acc, alpha = classifier_accuracy(x_train, train.emotion.to_numpy(str), train.actor.to_numpy(str), x_test,
                                         test.emotion.to_numpy(str), alphas)
        out[f"emotion_acc_from_{kind}"], out[f"alpha_emotion_{kind}"] = acc, alpha
        for name, cols in columns.items():
            if render_params is None or len(cols) != len(targets[name]) or not len(test_rows):
                out[f"{name}_r2_from_{kind}"], out[f"alpha_{name}_{kind}"] = math.nan, math.nan
                continue
            r2, alpha = grouped_probe_r2(x_train, render_params[train_rows][:, cols], train.actor.to_numpy(str),
                                         x_test, render_params[test_rows][:, cols], alphas)
            out[f"{name}_r2_from_{kind}"], out[f"alpha_{name}_{kind}"] = r2, alpha
    counts = test.emotion.value_counts()
    out["emotion_chance"] = float(counts.iloc[0] / len(test)) if len(test) else math.nan
    out["train_frames"], out["test_frames"] = int(len(train)), int(len(test))
    return out


# --------------------------------------------------------------------------------------------- report


def read_render_params(corpus_dir: Path, rows: int) -> tuple[np.ndarray | None, list[str]]:
    """The corpus's per-frame controls (built-in corpus) or (None, []) (MEAD has none)."""
    root = open_store(Path(corpus_dir) / "frames.zarr")
    names = [str(n) for n in root.attrs.get("render_params", [])]
    if not names or "render_params" not in root:
        return None, []
    params = np.asarray(root["render_params"][:rows], np.float64)
    return params, names


def build_motion_report(net: MotionNet, bank: KeypointBank, f_e: np.ndarray, f_m: np.ndarray, corpus_dir: Path,
                        pairs: pd.DataFrame, sync: pd.DataFrame | None, clips: pd.DataFrame, p: MotionReportParams,
                        cross_set: tuple[pd.DataFrame, str] | None = None) -> dict[str, Any]:
    """Every number of motion.json; f_e / f_m are the corpus rows' features (motion.zarr or computed).
    `cross_set` (quadruples, description) overrides `evaluation_quadruples` (Table 2: one set for all rows)."""
    manifest_path = Path(corpus_dir) / "manifest.parquet"
    if not manifest_path.is_file():
        raise InputError(manifest_path, "corpus manifest not found")
    manifest = pd.read_parquet(manifest_path)
    corpus_rows = int(bank.corpus_index().stop.max()) if bank.corpus_clips else 0
    if len(f_e) != corpus_rows or len(f_m) != corpus_rows:
        raise InputError(None, f"features cover {len(f_e)} frames, the corpus part of the keypoint store {corpus_rows}")
    rec = Reconstructor(net, bank)
    train_params = net.metrics.get("train_params") or {}
    # counterfactual labels train on every quadruple that has the renders: none is unseen
    trained_with_filter = (bool(train_params.get("use_filter", True))
                           and train_params.get("labels", "pseudo") == "pseudo")
    eval_pairs, cross_desc = cross_set or evaluation_quadruples(pairs, sync, trained_with_filter)
    recon, self_frames = heldout_self(rec, manifest, p.stride)
    cross_held, cross_held_frames = heldout_cross(rec, manifest, p.stride)
    recon.update(cross_held)
    cross, cross_counts = quadruple_cross(rec, eval_pairs, clips, p.stride)
    recon.update(cross)
    render_params, names = read_render_params(corpus_dir, corpus_rows)
    probe = linear_probes(bank, f_e, f_m, manifest, render_params, names, p)
    report = {
        "recon": recon,
        "probe": probe,
        "counts": {"heldout_frames": self_frames, "cross_heldout_frames": cross_held_frames,
                   "cross_quadruples": int(len(eval_pairs)), **cross_counts},
        "model": {"step": int(getattr(net, "step", 0)),
                  "quadruples": int((net.metrics or {}).get("quadruples", 0)),
                  **{k: bool(train_params[k]) for k in ("use_rec", "use_self", "use_con", "use_filter")
                     if k in train_params}, "labels": train_params.get("labels", "pseudo")},
        "info": {"cross_set": cross_desc,
                 "cross_heldout": "held-out actors: f_e of each non-neutral real clip x^{i,a}[t], f_m of the same "
                                  "actor's neutral clip of sentence a at the same relative time; target x^{i,a}[t]",
                 "distance": "mean over keypoints of sqrt(|dp|^2 + |dj|_F^2); *_value_px: keypoint position error "
                             "in pixels of the FOMM input image"},
    }
    return report_values(report)


def write_report(report: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    write_json(path, report)


def read_features(motion_store: Path, bank: KeypointBank) -> tuple[np.ndarray, np.ndarray]:
    """f_e, f_m of motion.zarr, checked to have the keypoint store's corpus index."""
    index = read_index(motion_store)
    if not index.reset_index(drop=True).equals(bank.corpus_index()):
        raise InputError(motion_store, "per-clip index differs from the keypoint store's corpus clips "
                                       "(re-run decompose)")
    root = open_store(motion_store)
    return np.asarray(root["f_e"][:]), np.asarray(root["f_m"][:])


def run_motion_report(model_path: Path, kp_store: Path, motion_store: Path, corpus_dir: Path, pseudo_dir: Path,
                      report: Path, p: MotionReportParams) -> dict:
    net = load_motion(model_path)
    bank = KeypointBank(kp_store)
    f_e, f_m = read_features(motion_store, bank)
    pairs = read_pairs(pseudo_dir)
    sync_path, clips_path = Path(pseudo_dir) / "sync.parquet", Path(pseudo_dir) / "clips.parquet"
    sync = pd.read_parquet(sync_path) if sync_path.is_file() else None
    if not clips_path.is_file():
        raise InputError(clips_path, "pseudo clips table not found (run pseudo_pairs first)")
    summary = build_motion_report(net, bank, f_e, f_m, corpus_dir, pairs, sync, pd.read_parquet(clips_path), p)
    write_report(summary, report)
    return summary


__all__ = ["Reconstructor", "build_motion_report", "classifier_accuracy", "evaluation_quadruples",
           "heldout_cross_rows", "linear_probes", "motion_errors", "read_features", "run_motion_report",
           "value_errors_px", "write_report"]
