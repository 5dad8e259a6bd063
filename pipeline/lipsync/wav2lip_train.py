"""Wav2Lip generator training on the corpus (L1 + the frozen expert's sync loss) and held-out evaluation.

A training example is a window of 5 consecutive frames: the generator sees each frame with its lower
half masked plus a frame of another window of the same clip (the reference), and that frame's mel
window; it must rebuild the frame. The loss is `(1 - w) * L1 + w * sync`, sync = BCE(expert cosine
of the 5 generated lower halves and the window's audio, 1), w = `sync_weight` after
`sync_warmup_steps` steps (the official trainer switches 0 -> 0.03 once the expert loss is low). The
generator's per-frame mel windows follow inference (row t of audio.zarr), one frame later than the
official trainer's f-1 start, so training and inference see the same alignment.

Held-out (test split) report: L1 / PSNR of frames rebuilt from a reference half a clip away (so the
mouth must come from the audio), against copying that reference (a clip's PSNR is the mean of its per-frame
PSNR, pipeline.core.image_quality); and syncnet_python-style confidence from the expert on real clips, generated
clips, clips re-dubbed with another sentence's audio and the same clips with their original mouths against that
audio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pipeline.core.config import BaseParams, TrainWav2lipParams
from pipeline.core.errors import InputError
from pipeline.core.image_quality import psnr
from pipeline.core.media import FACE_SIZE, load_audio
from pipeline.core.precision import announce_precision, pick_device, resolve_precision
from pipeline.corpus.manifest import read_manifest, real_clips, training_sets
from pipeline.lipsync.data import (
    WINDOW,
    ClipBank,
    bgr_to_rgb,
    expert_face_windows,
    mel_pad_mode,
    sample_generator_batch,
    training_bank,
)
from pipeline.lipsync.io import frozen, lipsync_config, load_expert, load_wav2lip_any
from pipeline.lipsync.redub import generate_faces, redub_faces, source_frame_indices
from pipeline.lipsync.sync_scorers import ExpertScorer, score_clip
from pipeline.models.syncnet_color import SyncNetColor
from pipeline.models.wav2lip import Wav2Lip, Wav2LipConfig
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

ARCH = "wav2lip"


def generator_config(p: TrainWav2lipParams) -> Wav2LipConfig:
    if not 0 < p.width <= 4:
        raise InputError("params.yaml", f"train_wav2lip.width must be in (0, 4], not {p.width}")
    return Wav2LipConfig.official() if p.width == 1.0 else Wav2LipConfig.scaled(p.width)


def sync_loss(audio: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """BCE(cosine of the expert's audio and generated-face embeddings, 1), in float32."""
    cosine = F.cosine_similarity(audio.float(), face.float()).clamp(0.0, 1.0)
    return F.binary_cross_entropy(cosine, torch.ones_like(cosine))


def train_wav2lip_model(corpus_dir: Path, audio_store: Path, expert_path: Path, model_out: Path, losses_csv: Path,
                        base: BaseParams, p: TrainWav2lipParams, *, log=print,
                        wide: tuple[Path, Path] | None = None) -> dict[str, Any]:
    """Train the generator (or import `pretrained`), evaluate it on the test split; return the metrics.
    With `p.pretrain_wide` the wide set's training clips (`wide` = folder, audio store) join the corpus's."""
    sources = training_sets((Path(corpus_dir), Path(audio_store)), wide, p.pretrain_wide)
    with torch_threads(p.threads):
        return _train_and_evaluate(corpus_dir, audio_store, expert_path, Path(model_out), losses_csv, base, p, log,
                                   sources)


def _train_and_evaluate(corpus_dir: Path, audio_store: Path, expert_path: Path, model_out: Path, losses_csv: Path,
                        base: BaseParams, p: TrainWav2lipParams, log, sources: list[tuple[Path, Path]]
                        ) -> dict[str, Any]:
    expert = frozen(load_expert(expert_path).module)
    if p.pretrained:
        generator, step, optimizers, rng_state = load_wav2lip_any(p.pretrained).module, 0, None, None
        train_metrics: dict[str, Any] = {"pretrained": str(p.pretrained)}
        LossLog(losses_csv)  # empty log: the plot output exists, with no curve
    else:
        generator, step, train_metrics, optimizers, rng_state = _train(sources, audio_store, expert, model_out,
                                                                       losses_csv, base, p, log)
    config = lipsync_config(ARCH, generator.config, base.fps, mel_pad_mode(audio_store))
    metrics = {**train_metrics,
               **evaluate_generator(generator.cpu().eval(), expert.cpu(), corpus_dir, audio_store, base, p, log=log)}
    save_training_state(model_out, modules={ARCH: generator}, config=config, step=step, metrics=metrics,
                        optimizers=optimizers,  # optimizer and RNG states kept so `resume` can continue
                        train_extra=rng_state)
    return metrics


def _train(sources: list[tuple[Path, Path]], audio_store: Path, expert: SyncNetColor, model_out: Path,
           losses_csv: Path, base: BaseParams, p: TrainWav2lipParams, log) -> tuple[Wav2Lip, int, dict, dict, dict]:
    device = pick_device(base.device)
    config = generator_config(p)
    seed_all(base.seed)
    generator = Wav2Lip(config).to(device)
    expert = expert.to(device)
    optimizer = torch.optim.Adam(generator.parameters(), lr=p.lr, betas=(0.5, 0.999))  # the official betas
    bank = training_bank(sources, 2 * WINDOW)
    log(f"train_wav2lip: {len(bank.clip_ids)} training clips, {len(bank.faces)} frames from {len(sources)} set(s); "
        f"{count_parameters(generator) / 1e6:.2f}M parameters (width {p.width}); device {device}")
    precision = resolve_precision(base.precision, device)
    announce_precision(precision, "train_wav2lip", log)
    if p.l1_region not in ("full", "lower"):
        raise InputError("params.yaml", f"train_wav2lip.l1_region must be full or lower, not '{p.l1_region}'")
    l1_from = FACE_SIZE // 2 if p.l1_region == "lower" else 0  # first row the L1 loss covers

    def step_fn(step: int) -> dict[str, float]:
        rng, _ = step_rngs(base.seed, step)
        mel, face, target, expert_mel = (t.to(device) for t in shard(sample_generator_batch(bank, rng, p.batch_size)))
        generator.train()
        with autocast(device, precision.bf16):
            generated = generator(mel, face)  # [B,3,5,96,96] BGR in [0,1]
            audio_emb, face_emb = expert(expert_mel, expert_face_windows(generated))
        generated = generated.float()
        l1 = F.l1_loss(generated[..., l1_from:, :], target[..., l1_from:, :])
        sync = sync_loss(audio_emb, face_emb)
        weight = p.sync_weight if step >= p.sync_warmup_steps else 0.0
        total = (1.0 - weight) * l1 + weight * sync
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return {"total": float(total.detach()), "l1": float(l1.detach()), "sync": float(sync.detach())}

    def metrics(step: int, recent: dict[str, float]) -> dict[str, Any]:
        return {"steps": step, "precision": precision.resolved, "parameters": count_parameters(generator),
                "width": p.width,
                **{f"final_{k}": round(v, 5) for k, v in recent.items()}}

    optimizers = {"optimizer": optimizer}
    fitted = fit(step_fn, stage="train_wav2lip", out=model_out, losses_csv=losses_csv,
                 config=lipsync_config(ARCH, config, base.fps, mel_pad_mode(audio_store)), modules={ARCH: generator},
                 optimizers=optimizers, p=p, metrics=metrics, final_save=False, log=log)
    return generator, fitted.step, fitted.metrics, optimizers, fitted.rng_state


# ------------------------------------------------------------------------------------------ evaluation


def reconstruction_scores(generator: Wav2Lip, faces: np.ndarray, mel: np.ndarray) -> tuple[dict, np.ndarray]:
    """Rebuild every frame from a reference half a clip away; L1/PSNR (whole face and lower half)."""
    refs = faces[(np.arange(len(faces)) + len(faces) // 2) % len(faces)]
    generated = generate_faces(generator, faces, refs, mel)
    half = faces.shape[1] // 2

    def mean_psnr(a: np.ndarray, b: np.ndarray) -> float:  # the mean of per-frame PSNR, as every report
        return float(psnr(a, b, data_range=255.0).mean())

    return {"l1": float(np.abs(generated.astype(np.float32) - faces).mean() / 255.0),
            "psnr": mean_psnr(generated, faces), "psnr_lower": mean_psnr(generated[:, half:], faces[:, half:]),
            "psnr_reference_copy_lower": mean_psnr(refs[:, half:], faces[:, half:])}, generated


def redub_partners(clips: pd.DataFrame) -> dict[str, str]:
    """Each clip -> a clip of the same actor, emotion and level with another sentence (first in order)."""
    partners = {}
    for _, group in clips.groupby(["actor", "emotion", "level"]):
        ids = list(group.sort_values("sentence_id").clip_id)
        for i, clip_id in enumerate(ids):
            if len(ids) > 1:
                partners[clip_id] = ids[(i + 1) % len(ids)]
    return partners


def evaluate_generator(generator: Wav2Lip, expert: SyncNetColor, corpus_dir: Path, audio_store: Path,
                       base: BaseParams, p: TrainWav2lipParams, *, log=print) -> dict[str, Any]:
    """Held-out reconstruction and sync-confidence metrics (see the module docstring)."""
    test = real_clips(read_manifest(corpus_dir), "test", min_frames=12)
    if test.empty:
        raise InputError(Path(corpus_dir) / "manifest.parquet", "no test-split clips to evaluate Wav2Lip on")
    chosen = test if p.eval_clips <= 0 else test.sample(n=min(p.eval_clips, len(test)), random_state=base.seed)
    bank = ClipBank.load(corpus_dir, audio_store, test)
    position = {c: i for i, c in enumerate(bank.clip_ids)}
    samples = {r.clip_id: load_audio(Path(corpus_dir) / r.wav_path) for r in test.itertuples()}
    scorer = ExpertScorer(expert, mel_pad_mode(audio_store), base.fps)
    partners = redub_partners(test)
    rows = []
    for clip_id in chosen.clip_id:
        faces, mel = bank.clip(position[clip_id])
        row, generated = reconstruction_scores(generator, faces, mel)
        row["conf_real"] = score_clip(scorer, bgr_to_rgb(faces), samples[clip_id]).confidence
        row["conf_generated"] = score_clip(scorer, bgr_to_rgb(generated), samples[clip_id]).confidence
        if clip_id in partners:
            other = partners[clip_id]
            _, other_mel = bank.clip(position[other])
            redubbed, idx = redub_faces(generator, faces, other_mel)
            row["conf_redub"] = score_clip(scorer, bgr_to_rgb(redubbed), samples[other]).confidence
            original = faces[source_frame_indices(len(faces), len(other_mel))]
            row["conf_original_mouth"] = score_clip(scorer, bgr_to_rgb(original), samples[other]).confidence
        rows.append(row)
    table = pd.DataFrame(rows)

    def mean(column: str) -> float:
        return round(float(table[column].mean()), 4) if column in table and table[column].notna().any() else None

    metrics = {"heldout_clips": len(table), "heldout_l1": mean("l1"), "heldout_psnr": mean("psnr"),
               "heldout_psnr_lower": mean("psnr_lower"),
               "heldout_psnr_reference_copy_lower": mean("psnr_reference_copy_lower"),
               "sync_conf_real": mean("conf_real"), "sync_conf_generated": mean("conf_generated"),
               "sync_conf_redub": mean("conf_redub"), "sync_conf_original_mouth": mean("conf_original_mouth"),
               "redub_clips": int(table["conf_redub"].notna().sum()) if "conf_redub" in table else 0}
    log(f"train_wav2lip: held-out L1 {metrics['heldout_l1']}, PSNR {metrics['heldout_psnr']} dB (lower half "
        f"{metrics['heldout_psnr_lower']} vs reference copy {metrics['heldout_psnr_reference_copy_lower']}); "
        f"expert confidence real {metrics['sync_conf_real']}, generated {metrics['sync_conf_generated']}, "
        f"re-dubbed {metrics['sync_conf_redub']} vs original mouths {metrics['sync_conf_original_mouth']}")
    return metrics
