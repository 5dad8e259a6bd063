"""Held-out evaluation of the audio encoders: how much emotion e_e and e_c carry, and reconstruction errors.

* `emotion_acc_from_ee`: the model's own classifier on e_e of each whole held-out clip.
* `emotion_acc_from_ee_probe`, `emotion_acc_from_ec`: a linear probe (least-squares classifier: ridge
  regression onto one-hot labels, argmax) fit on the training actors' clips, e_c mean-pooled per clip,
  scored on the held-out actors. The ridge penalty is picked by leave-one-actor-out accuracy on the
  training clips only. e_e should be high, e_c near chance (1 / number of emotions).
* reconstruction errors (mean |.| in MFCC units) on seeded within-actor quads of held-out actors:
  cross (content of sentence i + emotion of sentence j, against sentence i in j's emotion, DTW-aligned),
  self, and for orientation the "copy" error of using the source take itself as the target take.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from pipeline.audio.data import AudioBank, eval_quads
from pipeline.core.probes import fit_ridge
from pipeline.core.store import write_png
from pipeline.models.audio import AudioEncoders


def emotion_mel(model: AudioEncoders, bank: AudioBank, k: int) -> torch.Tensor | None:
    """Clip k's mel windows [1,T,80,16] when the model's E_e reads mel, else None."""
    return torch.from_numpy(bank.clip_mel(k))[None] if model.needs_mel else None


def encode_clip_emotion(model: AudioEncoders, bank: AudioBank, k: int, *, own_voice: bool = True) -> torch.Tensor:
    """e_e [1,E] of clip k as a whole; with prosody, relative to its speaker's baseline (`own_voice`) or to
    the model's default one (what a caller who knows nothing of the voice gets)."""
    prosody = voice = None
    if model.needs_prosody:
        prosody = torch.from_numpy(bank.clip_prosody(k))[None]
        voice = torch.from_numpy(bank.voices[k])[None] if own_voice else None
    return model.encode_emotion(torch.from_numpy(bank.clip(k))[None], emotion_mel(model, bank, k), prosody, voice)


@torch.inference_mode()
def clip_embeddings(model: AudioEncoders, bank: AudioBank, *, own_voice: bool = True) -> dict[str, np.ndarray]:
    """Per clip: e_e of the whole clip, classifier logits, e_c mean-pooled over its frames."""
    model.eval()
    ee, logits, ec = [], [], []
    for k in range(len(bank)):
        x = torch.from_numpy(bank.clip(k))[None]
        e = encode_clip_emotion(model, bank, k, own_voice=own_voice)
        ee.append(e[0].numpy())
        logits.append(model.classify_emotion(e)[0].numpy())
        ec.append(model.encode_content(x)[0].mean(dim=0).numpy())
    return {"e_e": np.stack(ee), "logits": np.stack(logits), "e_c": np.stack(ec)}


def ridge_classifier_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                              num_classes: int, alpha: float) -> tuple[float, np.ndarray]:
    """Fit ridge onto one-hot labels, predict the argmax; (accuracy, predictions)."""
    probe = fit_ridge(train_x, np.eye(num_classes)[train_y], alpha)
    predictions = probe.predict(test_x).argmax(axis=1)
    return float((predictions == test_y).mean()), predictions


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, train_groups: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, num_classes: int, alphas: Sequence[float]) -> tuple[float, float]:
    """(held-out accuracy, alpha): alpha by leave-one-group-out accuracy on the training rows, then refit."""
    groups = np.unique(train_groups)
    best_alpha, best_score = float(alphas[0]), -1.0
    if len(groups) >= 2 and len(alphas) >= 2:
        for alpha in alphas:
            hits = []
            for g in groups:
                held = train_groups == g
                acc, _ = ridge_classifier_accuracy(train_x[~held], train_y[~held], train_x[held], train_y[held],
                                                   num_classes, alpha)
                hits.append(acc * held.sum())
            score = sum(hits) / len(train_y)
            if score > best_score:
                best_alpha, best_score = float(alpha), score
    acc, _ = ridge_classifier_accuracy(train_x, train_y, test_x, test_y, num_classes, best_alpha)
    return acc, best_alpha


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[t, p] of clips with true class t predicted as p."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (truth, predicted), 1)
    return counts


@torch.inference_mode()
def reconstruction_errors(model: AudioEncoders, bank: AudioBank, seed: int, count: int) -> dict[str, float]:
    """Mean |.| (MFCC units) over whole-clip quads x_{i,m}, x_{i,n}, x_{j,n}, x_{j,m} of one actor."""
    model.eval()
    cross, self_, copy = [], [], []
    for q in eval_quads(bank, seed, count):
        for src, tgt, emo_src in ((q.a, q.b, q.c), (q.c, q.d, q.a)):
            x_src = torch.from_numpy(bank.clip(src))[None]
            x_tgt = torch.from_numpy(bank.clip(tgt)[bank.warp(src, tgt)])[None]  # tgt on src's timeline
            content = model.encode_content(x_src)
            emotion_tgt = encode_clip_emotion(model, bank, emo_src)
            emotion_src = encode_clip_emotion(model, bank, src)
            cross.append(float((model.decode(content, emotion_tgt) - x_tgt).abs().mean()))
            self_.append(float((model.decode(content, emotion_src) - x_src).abs().mean()))
            copy.append(float((x_src - x_tgt).abs().mean()))
    return {"cross_rec_err": float(np.mean(cross)), "self_rec_err": float(np.mean(self_)),
            "copy_baseline_err": float(np.mean(copy)), "rec_eval_pairs": len(cross)}


def evaluate_audio(model: AudioEncoders, train: AudioBank, test: AudioBank, *, seed: int, eval_quads_count: int,
                   probe_alphas: Sequence[float]) -> tuple[dict[str, Any], np.ndarray]:
    """The report's numbers and the held-out confusion matrix of the classifier on e_e."""
    emotions = model.emotions
    k = len(emotions)
    y_train, y_test = train.labels(emotions), test.labels(emotions)
    emb_train, emb_test = clip_embeddings(model, train), clip_embeddings(model, test)
    predicted = emb_test["logits"].argmax(axis=1)
    acc_ee = float((predicted == y_test).mean())
    acc_ee_probe, alpha_ee = probe_accuracy(emb_train["e_e"], y_train, train.actors, emb_test["e_e"], y_test, k,
                                            probe_alphas)
    acc_ec, alpha_ec = probe_accuracy(emb_train["e_c"], y_train, train.actors, emb_test["e_c"], y_test, k,
                                      probe_alphas)
    confusion = confusion_matrix(y_test, predicted, k)
    present = [i for i in range(k) if confusion[i].sum()]
    metrics: dict[str, Any] = {
        "emotion_acc_from_ee": round(acc_ee, 4),
        "emotion_acc_from_ec": round(acc_ec, 4),
        "emotion_acc_from_ee_probe": round(acc_ee_probe, 4),
        "emotion_acc_train_from_ee": round(float((emb_train["logits"].argmax(axis=1) == y_train).mean()), 4),
        "chance": round(1.0 / len(present), 4),
        "probe_alpha_ee": alpha_ee, "probe_alpha_ec": alpha_ec,
        "heldout_clips": len(test), "heldout_actors": int(len(np.unique(test.actors))),
        "per_emotion_acc_from_ee": {emotions[i]: round(float(confusion[i, i] / confusion[i].sum()), 4)
                                    for i in present},
    }
    if model.needs_prosody:  # a caller with one clip and no baseline of its voice gets the training average
        default_voice = clip_embeddings(model, test, own_voice=False)["logits"].argmax(axis=1)
        metrics["emotion_acc_from_ee_default_voice"] = round(float((default_voice == y_test).mean()), 4)
    levels = np.unique(test.levels)
    if len(levels) > 1:
        metrics["emotion_acc_from_ee_by_level"] = {
            str(int(lv)): round(float((predicted[test.levels == lv] == y_test[test.levels == lv]).mean()), 4)
            for lv in levels}
    metrics.update({k_: (round(v, 4) if isinstance(v, float) else v)
                    for k_, v in reconstruction_errors(model, test, seed, eval_quads_count).items()})
    return metrics, confusion


def plot_confusion(confusion: np.ndarray, names: Sequence[str], path: str | Path, title: str) -> None:
    """Row-normalised confusion matrix (true rows, predicted columns) with counts, drawn with OpenCV."""
    k = len(names)
    cell, left, top = 56, 110, 70
    width, height = left + k * cell + 20, top + k * cell + 30
    img = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, title, (10, 22), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "predicted ->", (left, 44), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, float), where=rows > 0)
    for i in range(k):
        cv2.putText(img, names[i][:12], (6, top + i * cell + cell // 2 + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, names[i][:7], (left + i * cell + 3, top - 8), font, 0.33, (0, 0, 0), 1, cv2.LINE_AA)
        for j in range(k):
            shade = int(round(255 * (1 - share[i, j])))
            x0, y0 = left + j * cell, top + i * cell
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), (shade, shade, 255), -1)
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), (180, 180, 180), 1)
            if confusion[i, j]:
                colour = (255, 255, 255) if share[i, j] > 0.6 else (0, 0, 0)
                cv2.putText(img, str(int(confusion[i, j])), (x0 + cell // 2 - 8, y0 + cell // 2 + 5), font, 0.45,
                            colour, 1, cv2.LINE_AA)
    write_png(path, img)
