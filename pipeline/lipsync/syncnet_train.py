"""Training and held-out evaluation of Wav2Lip's lip-sync expert (SyncNet_color) on the corpus.

Training follows Wav2Lip's `color_syncnet_train.py`: a 5-frame window of lower-half faces is paired
with the mel window of its first frame (label 1) or of another frame of the same clip (label 0); the
loss is BCE on the cosine similarity of the two (post-ReLU, L2-normalised) embeddings. To learn within
a CPU budget, each step embeds several windows per clip and scores every in-clip pairing of them
(`block_sync_loss`): the same examples as the official trainer, many more per forward pass. Two departures,
both because BCE alone sat at chance (ln 2) for whole CPU budgets once the wide set joined: an in-clip ranking
term (`in_clip_contrastive_loss`, `contrastive_weight`) and `own_set_steps` on the corpus alone before the
wide set's hundreds of faces join (docs/experiments.md, lip sync).

Held-out metrics (test split: unseen actors and sentences):
* in-sync / off-sync accuracy: cosine > 0.5 on in-sync windows, < 0.5 on windows paired with another
  frame's audio (drawn like the training negatives); `heldout_accuracy` is their mean.
* offset recovery: each clip is cut so that its audio leads (k > 0) or lags (k < 0) the video by a known
  k frames, and syncnet_python's offset search (pipeline.lipsync.av_sync) must return k.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.config import BaseParams, TrainSyncnetParams
from pipeline.core.errors import InputError
from pipeline.core.media import load_audio
from pipeline.core.precision import announce_precision, pick_device, resolve_precision
from pipeline.core.store import open_store
from pipeline.corpus.manifest import read_manifest, real_clips, training_sets
from pipeline.lipsync.data import (
    WINDOW,
    ClipBank,
    mel_pad_mode,
    sample_expert_batch,
    sample_expert_blocks,
    training_bank,
)
from pipeline.lipsync.io import lipsync_config, load_syncnet_any
from pipeline.lipsync.sync_scorers import ExpertScorer, score_clip
from pipeline.models.syncnet_color import SyncNetColor, SyncNetColorConfig
from pipeline.training.distributed import shard
from pipeline.training.fit import fit
from pipeline.training.loop import (
    LossLog,
    autocast,
    count_parameters,
    save_training_state,
    seed_all,
    step_rngs,
    torch_threads,
)

ARCH = "syncnet_color"
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps


def expert_config(p: TrainSyncnetParams) -> SyncNetColorConfig:
    if not 0 < p.width <= 4:
        raise InputError("params.yaml", f"width must be in (0, 4], not {p.width}")
    return SyncNetColorConfig.official() if p.width == 1.0 else SyncNetColorConfig.scaled(p.width)


def expert_loss(model: SyncNetColor, mel: torch.Tensor, faces: torch.Tensor, label: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE on the cosine similarity (clamped into [0,1] against rounding), and the similarities."""
    audio, face = model(mel, faces)
    cosine = F.cosine_similarity(audio, face).clamp(0.0, 1.0)
    return F.binary_cross_entropy(cosine, label), cosine


def block_sync_loss(audio: torch.Tensor, face: torch.Tensor, first: torch.Tensor, min_shift: int,
                    contrastive_weight: float = 0.0, temperature: float = 0.1
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """Wav2Lip's BCE-on-cosine over every (video window i, audio window j) pair of the same clip.

    `audio`, `face`: the expert's embeddings [C*W, D] of W windows from each of C clips, whose start
    frames are `first` [C,W] (each window is embedded once, its audio paired with every window). Pairs
    i == j are in sync (label 1); pairs at least `min_shift` frames apart are off sync (label 0); the two
    groups weigh equally, as the 50/50 sampling of the official trainer does. W windows give W in-sync and
    up to W(W-1) off-sync pairs per forward pass instead of one pair per window.

    `contrastive_weight` > 0 adds `in_clip_contrastive_loss` (our addition): BCE alone can sit on the
    chance plateau (every cosine 0.5, loss ln 2) for a whole CPU budget, as our sync scorer did for 2000
    steps; ranking the in-sync pair against the same clip's off-sync pairs gives a gradient there.
    """
    clips, windows = first.shape
    face, audio = face.float().view(clips, windows, -1), audio.float().view(clips, windows, -1)
    cosine = torch.einsum("cid,cjd->cij", face, audio)  # embeddings are L2-normalised: dot = cosine
    in_sync = torch.eye(windows, dtype=torch.bool, device=cosine.device).expand(clips, windows, windows)
    shift = (first[:, :, None] - first[:, None, :]).abs().to(cosine.device)
    off_sync = ~in_sync & (shift >= min_shift)
    probability = cosine.clamp(0.0, 1.0)  # post-ReLU embeddings: cosine is in [0, 1] up to rounding
    bce = F.binary_cross_entropy(probability, in_sync.float(), reduction="none")
    loss = bce[in_sync].mean()
    if off_sync.any():
        loss = 0.5 * loss + 0.5 * bce[off_sync].mean()
    terms = {"bce": float(loss.detach()), "contrastive": 0.0}
    if off_sync.any():  # logged also when it does not train: it shows whether in-sync pairs rank first
        ranking = in_clip_contrastive_loss(cosine, in_sync, off_sync, temperature)
        terms["contrastive"] = float(ranking.detach())
        if contrastive_weight > 0:
            loss = loss + contrastive_weight * ranking
    with torch.no_grad():
        hit_in = (probability[in_sync] > 0.5).float().mean()
        hit_off = (probability[off_sync] < 0.5).float().mean() if off_sync.any() else hit_in
    return loss, {**terms, "train_in_sync_accuracy": float(hit_in), "train_off_sync_accuracy": float(hit_off)}


def in_clip_contrastive_loss(cosine: torch.Tensor, in_sync: torch.Tensor, off_sync: torch.Tensor,
                             temperature: float) -> torch.Tensor:
    """Cross-entropy of picking the in-sync partner among a window's candidates, both ways (InfoNCE).

    `cosine` [C,W,W] between video window i and audio window j of one clip; row i's candidates are j = i and
    every off-sync j (pairs closer than the minimum shift are neither, so they are masked out). The same for
    each audio window over the video windows (columns). The softmax only compares a clip's own pairs, so
    it still pulls in-sync cosines above off-sync ones when all of them sit at the same value.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, not {temperature}")
    candidates = in_sync | off_sync
    logits = (cosine / temperature).masked_fill(~candidates, float("-inf"))
    target = torch.arange(cosine.shape[1], device=cosine.device).expand(cosine.shape[0], -1)
    rows = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
    columns = F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), target.flatten(), reduction="none")
    # a window whose only candidate is itself (every other window too close) teaches nothing
    informative = off_sync.any(dim=2).flatten()
    informative_t = off_sync.any(dim=1).flatten()
    return 0.5 * (rows[informative].mean() + columns[informative_t].mean())


def train_syncnet_model(corpus_dir: Path, audio_store: Path, model_out: Path, losses_csv: Path, base: BaseParams,
                        p: TrainSyncnetParams, *, stage: str = "train_syncnet", log=print,
                        wide: tuple[Path, Path] | None = None) -> dict[str, Any]:
    """Train the expert (or import `pretrained`), evaluate it on the test split; return the metrics.

    With `p.pretrain_wide`, the training clips of the wide set (`wide` = its folder and audio store) join the
    corpus's: LRS2's role in the paper, many faces and voices instead of the corpus's few.

    Training draws from seed `base.seed + p.seed_offset`, so the sync scorer (`train_sync_scorer`, offset 1)
    starts and samples differently from the expert Wav2Lip trains against; evaluation uses `base.seed`,
    so both are measured on the same held-out windows and shifts.
    """
    with torch_threads(p.threads):
        sources = training_sets((Path(corpus_dir), Path(audio_store)), wide, p.pretrain_wide)
        return _train_and_evaluate(corpus_dir, audio_store, Path(model_out), losses_csv, base, p, stage, log, sources)


def _train_and_evaluate(corpus_dir: Path, audio_store: Path, model_out: Path, losses_csv: Path, base: BaseParams,
                        p: TrainSyncnetParams, stage: str, log, sources: list[tuple[Path, Path]]) -> dict[str, Any]:
    if p.pretrained:
        loaded = load_syncnet_any(p.pretrained)
        if loaded.arch != ARCH:
            raise InputError(p.pretrained, f"{stage}.pretrained must be a SyncNet_color expert "
                                           f"(lipsync_expert.pth), this is {loaded.arch}")
        model, step, train_metrics = loaded.module, 0, {"pretrained": str(p.pretrained)}
        optimizers = rng_state = None
        LossLog(losses_csv)  # empty log: the plot output exists, with no curve
    else:
        model, step, train_metrics, optimizers, rng_state = _train(sources, audio_store, model_out, losses_csv,
                                                                   base, p, stage, log)
    config = lipsync_config(ARCH, model.config, base.fps, mel_pad_mode(audio_store))
    metrics = {**train_metrics, **evaluate_expert(model.cpu().eval(), corpus_dir, audio_store, base, p, stage=stage,
                                                  log=log)}
    save_training_state(model_out, modules={ARCH: model}, config=config, step=step, metrics=metrics,
                        optimizers=optimizers,  # optimizer and RNG states kept so `resume` can continue
                        train_extra=rng_state)
    return metrics


def _train(sources: list[tuple[Path, Path]], audio_store: Path, model_out: Path, losses_csv: Path, base: BaseParams,
           p: TrainSyncnetParams, stage: str, log) -> tuple[SyncNetColor, int, dict, dict, dict]:
    if p.windows_per_clip < 2 or p.batch_size % p.windows_per_clip:
        raise InputError("params.yaml", f"{stage}.batch_size must be a multiple of windows_per_clip (>= 2)")
    device = pick_device(base.device)
    config = expert_config(p)
    seed = base.seed + p.seed_offset
    seed_all(seed)
    model = SyncNetColor(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr)
    bank = training_bank(sources, 2 * WINDOW)
    log(f"{stage}: {len(bank.clip_ids)} training clips, {len(bank.faces)} frames from {len(sources)} set(s); "
        f"{count_parameters(model) / 1e6:.2f}M parameters (width {p.width}); device {device}")
    precision = resolve_precision(base.precision, device)
    announce_precision(precision, stage, log)
    optimizers = {"optimizer": optimizer}

    def step_fn(step: int) -> dict[str, float]:
        rng, _ = step_rngs(seed, step)
        pool = bank.first_set_clips if step < p.own_set_steps else None  # the corpus alone first, then every set
        mel, faces, first = shard(sample_expert_blocks(bank, rng, p.batch_size // p.windows_per_clip,
                                                        p.windows_per_clip, pool))  # whole clips per rank
        model.train()
        with autocast(device, precision.bf16):
            audio, face = model(mel.to(device), faces.to(device))
        loss, terms = block_sync_loss(audio, face, first, p.negative_min_shift, p.contrastive_weight,
                                      p.contrastive_temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach()), **terms}

    def metrics(step: int, recent: dict[str, float]) -> dict[str, Any]:
        return {"steps": step, "precision": precision.resolved, "parameters": count_parameters(model), "width": p.width,
                **{f"final_{k}": round(v, 5) for k, v in recent.items()}}

    fitted = fit(step_fn, stage=stage, out=model_out, losses_csv=losses_csv,
                 config=lipsync_config(ARCH, config, base.fps, mel_pad_mode(audio_store)), modules={ARCH: model},
                 optimizers=optimizers, p=p, metrics=metrics, final_save=False, log=log)
    return model, fitted.step, fitted.metrics, optimizers, fitted.rng_state


# ------------------------------------------------------------------------------------------ evaluation


@torch.inference_mode()
def window_accuracy(model: SyncNetColor, bank: ClipBank, seed: int, windows: int, min_shift: int
                    ) -> dict[str, float]:
    """In-sync and off-sync accuracy of `cosine > 0.5` on seeded held-out windows (half of each)."""
    rng = np.random.default_rng([seed, 101])
    hits, labels = [], []
    for start in range(0, windows, 64):
        mel, faces, label = sample_expert_batch(bank, rng, min(64, windows - start), min_shift)
        _, cosine = expert_loss(model, mel, faces, label)
        hits.append(((cosine > 0.5).float() == label).numpy())
        labels.append(label.numpy())
    hits, labels = np.concatenate(hits), np.concatenate(labels)
    in_sync, off_sync = float(hits[labels == 1].mean()), float(hits[labels == 0].mean())
    return {"in_sync_accuracy": round(in_sync, 4), "off_sync_accuracy": round(off_sync, 4),
            "heldout_accuracy": round((in_sync + off_sync) / 2, 4), "heldout_windows": int(len(labels))}


def shift_clip(frames: np.ndarray, samples: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut a clip so its audio leads the video by k frames (k > 0) or lags it by -k (k < 0).

    k > 0: video frames 0..T-k-1 with the audio from frame k on (the sound of frame t + k plays at t);
    k < 0: video frames -k..T-1 with the audio from frame 0 on.
    """
    if k >= 0:
        video = frames[:len(frames) - k]
        audio = samples[k * SAMPLES_PER_FRAME:]
    else:
        video = frames[-k:]
        audio = samples[:len(samples) + k * SAMPLES_PER_FRAME]
    return video, audio


def offset_recovery(scorer: ExpertScorer, clips: Iterable[tuple[np.ndarray, np.ndarray]], seed: int, per_clip: int,
                    max_offset: int) -> dict[str, float]:
    """How often the offset search returns the known shift (exactly, and within one frame)."""
    rng = np.random.default_rng([seed, 202])
    found, truth, confidence = [], [], []
    for frames, samples in clips:
        limit = min(max_offset, len(frames) - 12)  # keep >= 7 windows after cutting
        if limit < 0:
            continue
        for k in rng.integers(-limit, limit + 1, size=per_clip):
            video, audio = shift_clip(frames, samples, int(k))
            result = score_clip(scorer, video, audio)
            found.append(result.offset)
            truth.append(int(k))
            confidence.append(result.confidence)
    if not truth:
        return {"offset_recovery": float("nan"), "offset_recovery_within_1": float("nan"), "offset_trials": 0}
    found, truth = np.array(found), np.array(truth)
    return {"offset_recovery": round(float((found == truth).mean()), 4),
            "offset_recovery_within_1": round(float((np.abs(found - truth) <= 1).mean()), 4),
            "offset_trials": int(len(truth)), "offset_mean_confidence": round(float(np.mean(confidence)), 4)}


def evaluate_expert(model: SyncNetColor, corpus_dir: Path, audio_store: Path, base: BaseParams,
                    p: TrainSyncnetParams, *, stage: str = "train_syncnet", log=print) -> dict[str, Any]:
    """Held-out window accuracy and offset recovery on the test split's real clips."""
    manifest = read_manifest(corpus_dir)
    test = real_clips(manifest, "test", 2 * WINDOW)
    if test.empty:
        raise InputError(Path(corpus_dir) / "manifest.parquet", "no test-split clips to evaluate the expert on")
    bank = ClipBank.load(corpus_dir, audio_store, test)
    metrics = window_accuracy(model, bank, base.seed, p.eval_windows, p.negative_min_shift)
    frames = open_store(Path(corpus_dir) / "frames.zarr")["frames"]
    clips = ((frames[int(r.start):int(r.stop)], load_audio(Path(corpus_dir) / r.wav_path))
             for r in test.itertuples())  # one clip in memory at a time
    scorer = ExpertScorer(model, mel_pad_mode(audio_store), base.fps)
    metrics.update(offset_recovery(scorer, clips, base.seed, p.eval_offsets, p.max_eval_offset))
    log(f"{stage}: held-out accuracy {metrics['heldout_accuracy']:.3f} (in-sync {metrics['in_sync_accuracy']:.3f},"
        f" off-sync {metrics['off_sync_accuracy']:.3f}); offset recovered {metrics['offset_recovery']:.3f}"
        f" (+-1: {metrics['offset_recovery_within_1']:.3f}) over {metrics['offset_trials']} trials")
    if metrics["heldout_accuracy"] < 0.6:  # SyncNet can sit on the chance plateau (bce ln 2) for its whole budget
        log(f"{stage}: WARNING held-out accuracy {metrics['heldout_accuracy']:.3f} is near chance: this model did not "
            f"learn sync, and every confidence it gives (sync_filter, Sync_conf, LSE-D) is noise")
    return metrics
