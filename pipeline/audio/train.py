"""Training of the emotion/content disentanglement (EVP §3.1, EMMN §3.3) on the corpus's real clips.

Each step draws `batch_quads` quads (pipeline.audio.data.sample_quad) from the training actors:
x_{i,m}, x_{i,n} (one actor, one sentence, two emotions; DTW-aligned), x_{j,n}, x_{j,m} (another sentence,
of the same actor or, with `cross_actor_prob`, of another one). Content runs on `segment_frames`-frame
segments, emotion on `emotion_frames`-frame crops of all four clips (an utterance-level e_e). Losses:
self- and cross-reconstruction, content consistency, emotion classification (pipeline.audio.losses).

After the last step the BatchNorm running statistics are recomputed under the final weights
(`recalibrate_batchnorm`): measured on the default corpus after 300 steps, the EMA statistics (momentum
0.1, weights still moving fast) gave 23% emotion accuracy on the training clips in eval mode against 56%
with batch statistics; exact averages over training batches gave 55%.

`run_train_audio` is the `train_audio` stage's one call: align, train (or import EVP's weights), score on the
held-out actors, write checkpoint, report and confusion matrix.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.audio.data import AudioBank, QuadBatch, sample_batch, shard_quads
from pipeline.audio.losses import (
    content_consistency_loss,
    cross_reconstruction_loss,
    emotion_classification_loss,
    self_reconstruction_loss,
)
from pipeline.audio.report import evaluate_audio, plot_confusion
from pipeline.core.config import BaseParams, TrainAudioParams
from pipeline.core.errors import InputError
from pipeline.core.precision import pick_device
from pipeline.core.store import write_json
from pipeline.core.timings import read_timings, write_timings
from pipeline.corpus.manifest import read_manifest, real_clips
from pipeline.models.audio import (
    ARCH,
    AudioConfig,
    AudioEncoders,
    load_official_evp_audio,
)
from pipeline.training.fit import fit
from pipeline.training.loop import (
    LossLog,
    count_parameters,
    save_training_state,
    seed_all,
    step_rngs,
    torch_threads,
)


def audio_config(p: TrainAudioParams, emotions: tuple[str, ...]) -> AudioConfig:
    if not 0 < p.width <= 4:
        raise InputError("params.yaml", f"train_audio.width must be in (0, 4], not {p.width}")
    return AudioConfig.scaled(p.width, emotions=emotions, content_dim=p.content_dim, emotion_dim=p.emotion_dim,
                              emotion_input=p.emotion_input, emotion_stride=p.emotion_stride,
                              temporal_channels=p.temporal_channels, standardize=p.standardize,
                              output_scale=4.0 if p.standardize else 90.0,  # +-4 std, or EVP's +-90 MFCC units
                              temporal_layers=p.temporal_layers, prosody_channels=p.prosody_channels)


def mfcc_statistics(bank: AudioBank) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coefficient mean and std over every window row of the bank's clips."""
    rows = torch.from_numpy(bank.mfcc.reshape(-1, bank.mfcc.shape[-1])).double()
    return rows.mean(dim=0).float(), rows.std(dim=0).float()


def checkpoint_config(model_config: AudioConfig, base: BaseParams) -> dict[str, Any]:
    """What load_audio_encoders needs, plus the front-end the windows come from."""
    return {"arch": ARCH, "model": model_config.to_dict(), "fps": base.fps,
            "frontend": "EVP/EAMM MFCC windows [28,12] per video frame (pipeline.audio.frontends.evp_mfcc_windows)"}


def disentanglement_losses(model: AudioEncoders, batch: QuadBatch, p: TrainAudioParams
                           ) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of EVP's four losses on one batch of quads, and each term for the log."""
    q = batch.seg_a.shape[0]
    content = model.encode_content(torch.cat([batch.seg_a, batch.seg_b, batch.seg_c, batch.seg_d]))
    c_im, c_in, c_jn, c_jm = content.split(q)
    emotion = (model.encode_emotion(None, batch.emo, batch.prosody, batch.voice) if model.needs_mel
               else model.encode_emotion(batch.emo, None, batch.prosody, batch.voice))
    e_im, _, e_jn, _ = emotion.split(q)  # crops of a, b, c, d: a = x_{i,m}, c = x_{j,n}
    decoded = model.decode(torch.cat([c_im, c_jn, c_im, c_jn]), torch.cat([e_im, e_jn, e_jn, e_im]))
    self_im, self_jn, cross_in, cross_jm = decoded.split(q)
    l_self = self_reconstruction_loss(self_im, batch.seg_a, self_jn, batch.seg_c)
    l_cross = cross_reconstruction_loss(cross_in, batch.seg_b, cross_jm, batch.seg_d)
    l_con = content_consistency_loss(c_im, c_in) + content_consistency_loss(c_jn, c_jm)
    logits = model.classify_emotion(emotion)
    l_cla = emotion_classification_loss(logits, batch.labels)
    total = (p.self_weight * l_self + p.cross_weight * l_cross + p.content_weight * l_con
             + p.classification_weight * l_cla)
    accuracy = float((logits.argmax(dim=1) == batch.labels).float().mean())
    return total, {"total": float(total.detach()), "self_rec": float(l_self.detach()),
                   "cross_rec": float(l_cross.detach()), "content": float(l_con.detach()),
                   "classification": float(l_cla.detach()), "train_accuracy": accuracy}


@torch.no_grad()
def recalibrate_batchnorm(model: AudioEncoders, bank: AudioBank, labels, base: BaseParams, p: TrainAudioParams,
                          device: torch.device) -> int:
    """Reset every BatchNorm's running statistics to the exact average over `p.bn_recalibration_batches`
    training batches (drawn like training steps, from their own seeds) under the current weights."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or p.bn_recalibration_batches < 1:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for i in range(p.bn_recalibration_batches):
        rng, _ = step_rngs(base.seed + 1, i)  # seeds apart from the training steps'
        batch = sample_batch(bank, labels, rng, p.batch_quads, p.segment_frames, p.emotion_frames, p.cross_actor_prob,
                             p.emotion_input)
        disentanglement_losses(model, _to(batch, device), p)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()
    return p.bn_recalibration_batches


def _to(batch: QuadBatch, device: torch.device) -> QuadBatch:
    return QuadBatch(*(None if t is None else t.to(device)
                       for t in (batch.seg_a, batch.seg_b, batch.seg_c, batch.seg_d, batch.emo, batch.labels,
                                 batch.prosody, batch.voice)))


def train_audio_model(train_bank: AudioBank, emotions: tuple[str, ...], model_out: Path, losses_csv: Path,
                      base: BaseParams, p: TrainAudioParams, log=print
                      ) -> tuple[AudioEncoders, int, dict[str, Any], dict[str, torch.optim.Optimizer], dict[str, Any]]:
    """Train (or resume) the encoders on the training bank; the checkpoint is saved every `checkpoint_every`
    steps (the caller saves the final one with the held-out metrics). Returns (model, steps, metrics,
    optimizers, the RNG state the final checkpoint carries)."""
    if p.batch_quads < 1 or p.segment_frames < 1 or p.emotion_frames < 1:
        raise InputError("params.yaml", "train_audio.batch_quads, segment_frames and emotion_frames must be >= 1")
    device = pick_device(base.device)
    seed_all(base.seed)
    config = audio_config(p, emotions)
    model = AudioEncoders(config)
    if config.standardize:
        model.set_standardization(*mfcc_statistics(train_bank))
    if config.prosody_channels:
        if train_bank.voices is None:
            raise InputError("params.yaml", "train_audio.prosody_channels > 0 needs the prosody store")
        model.set_voice_default(torch.from_numpy(np.unique(train_bank.voices, axis=0).mean(axis=0)))
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr, betas=(0.5, 0.999))
    labels = train_bank.labels(emotions)
    full_config = checkpoint_config(config, base)
    log(f"train_audio: {len(train_bank)} training clips ({len(train_bank.mfcc)} frames), {len(train_bank.warps)} "
        f"DTW alignments; {count_parameters(model) / 1e6:.2f}M parameters (width {p.width}); device {device}")

    def step_fn(step: int) -> dict[str, float]:
        rng, _ = step_rngs(base.seed, step)
        batch = sample_batch(train_bank, labels, rng, p.batch_quads, p.segment_frames, p.emotion_frames,
                             p.cross_actor_prob, p.emotion_input)
        if batch.voice is not None and p.voice_dropout > 0:  # some crops as a caller who knows no voice hears them
            unknown = torch.from_numpy(rng.random(len(batch.voice)) < p.voice_dropout)
            batch.voice[unknown] = float("nan")
        batch = _to(shard_quads(batch), device)
        model.train()
        loss, terms = disentanglement_losses(model, batch, p)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return terms

    def metrics(step: int, recent: dict[str, float]) -> dict[str, Any]:
        return {"steps": step, "parameters": count_parameters(model), "width": p.width,
                **{f"final_{k}": round(v, 5) for k, v in recent.items()}}

    optimizers = {"optimizer": optimizer}
    fitted = fit(step_fn, stage="train_audio", out=model_out, losses_csv=losses_csv, config=full_config,
                 modules={ARCH: model}, optimizers=optimizers, p=p, metrics=metrics, final_save=False, log=log)
    t1 = time.monotonic()
    recalibrated = recalibrate_batchnorm(model, train_bank, labels, base, p, device)
    log(f"train_audio: BatchNorm statistics recomputed over {recalibrated} batches in {time.monotonic() - t1:.0f}s")
    return model.cpu().eval(), fitted.step, fitted.metrics, optimizers, fitted.rng_state


def import_pretrained(path: str, emotions_needed: set[str], losses_csv: Path) -> tuple[AudioEncoders, dict[str, Any]]:
    """EVP's released disentanglement checkpoint instead of training (class order: EVP's)."""
    model = load_official_evp_audio(path)
    missing = sorted(emotions_needed - set(model.emotions))
    if missing:
        raise InputError(path, f"corpus emotion '{missing[0]}' is not one of EVP's classes {model.emotions}")
    LossLog(losses_csv)  # empty log: the plot output exists, with no curve
    return model, {"pretrained": str(path), "steps": 0}


def run_train_audio(corpus_dir: Path, audio_store: Path, model_out: Path, report: Path, losses_csv: Path,
                    confusion_png: Path, base: BaseParams, p: TrainAudioParams, log=print,
                    prosody_store: Path = Path("data/features/prosody.zarr")) -> dict:
    """Align, train (or import), evaluate on the held-out actors; write checkpoint, report and pictures."""
    if p.voice_baseline not in ("speaker", "default"):
        raise InputError("params.yaml", f"train_audio.voice_baseline must be speaker or default, not "
                                        f"{p.voice_baseline!r}")
    with torch_threads(p.threads):
        manifest = read_manifest(corpus_dir)
        train_clips, test_clips = real_clips(manifest, "train", 2), real_clips(manifest, "test", 2)
        if test_clips.empty:
            raise InputError(Path(corpus_dir) / "manifest.parquet",
                             "no held-out (test split) real clips to evaluate on")
        t0 = time.monotonic()
        with_mel = p.emotion_input == "mel" and not p.pretrained
        voices = prosody_store if p.prosody_channels and not p.pretrained else None
        train_bank = AudioBank.load(audio_store, train_clips, with_mel=with_mel, prosody_store=voices)
        test_bank = AudioBank.load(audio_store, test_clips, with_mel=with_mel, prosody_store=voices)
        if voices is not None and p.voice_baseline == "default":  # ablation: everyone gets the training average
            for bank in (train_bank, test_bank):
                bank.voices[:] = np.unique(train_bank.voices, axis=0).mean(axis=0)
        dtw_seconds = time.monotonic() - t0
        log(f"train_audio: {len(train_bank.warps) + len(test_bank.warps)} DTW alignments in {dtw_seconds:.1f}s")
        # alphabetical: on MEAD's eight emotions this is EVP's class order
        emotions = tuple(sorted({str(e) for e in train_bank.emotions}))
        optimizers = rng_state = None
        if p.pretrained:
            model, train_metrics = import_pretrained(p.pretrained, set(train_bank.emotions) | set(test_bank.emotions),
                                                     losses_csv)
            step = 0
        else:
            model, step, train_metrics, optimizers, rng_state = train_audio_model(
                train_bank, emotions, model_out, losses_csv, base, p, log=log)
        heldout, confusion = evaluate_audio(model, train_bank, test_bank, seed=base.seed,
                                            eval_quads_count=p.eval_quads, probe_alphas=p.probe_alphas)
    metrics = {**heldout, **train_metrics,
               "dtw_mean_path_cost": round(float(sum(train_bank.dtw_costs) / max(len(train_bank.dtw_costs), 1)), 3)}
    save_training_state(model_out, modules={ARCH: model}, config=checkpoint_config(model.config, base), step=step,
                        metrics=metrics, optimizers=optimizers,  # optimizer, RNG states: `resume` can continue
                        train_extra=rng_state)
    write_timings(model_out, {**read_timings(model_out), "dtw_seconds": round(dtw_seconds, 1)})
    plot_confusion(confusion, model.emotions, confusion_png,
                   f"held-out emotion from e_e: acc {metrics['emotion_acc_from_ee']:.3f} "
                   f"(chance {metrics['chance']:.3f})")
    write_json(report, metrics)
    log(f"train_audio: held-out emotion accuracy from e_e {metrics['emotion_acc_from_ee']:.3f} (probe "
        f"{metrics['emotion_acc_from_ee_probe']:.3f}), from e_c {metrics['emotion_acc_from_ec']:.3f}, chance "
        f"{metrics['chance']:.3f}; cross-reconstruction {metrics['cross_rec_err']:.2f} (copy "
        f"{metrics['copy_baseline_err']:.2f})")
    return metrics
