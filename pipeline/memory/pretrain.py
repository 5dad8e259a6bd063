"""Audio2Mouth pre-training, the pretrain_mouth stage (paper §4.1: "we introduce LRW ... to pre-train our
Audio2Mouth"): the content encoder E_c, with E_i and D_m, learns L_a2m (Eq. 6) on windows of the wide set's many
speakers, sentences and faces and of the corpus's training actors. The output is audio.pt with E_c replaced
(`audio_mouth.pt`, loadable by `load_audio_encoders`): train_memory reads it as its frozen audio encoders, so all
three variants and inference hear through the pre-trained E_c; E_e and the rest of audio.pt stay as train_audio
made them.

Why a stage of its own: train_audio's E_c learns from the corpus alone (8 voices, ~24 sentences), and Audio2Mouth
on its frozen features did not follow unseen sentences (held-out mouth error 0.52x the mean predictor's with the
wide set in every step; 0.33x in memory.json after 1000 steps of this stage; docs/experiments.md). Fine-tuning
E_c inside train_memory costs ~1 s a step on a 2-core CPU (E_c runs on every frame of both batches); here a step
is ~0.2 s and runs once for the three variants. E_i and D_m of this stage are kept in the file (for `resume`);
train_memory starts its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.core.config import (
    BaseParams,
    PretrainMouthParams,
    TrainMemoryParams,
    as_dict,
    with_field,
)
from pipeline.core.errors import InputError
from pipeline.core.precision import pick_device
from pipeline.memory.train import (
    Batch,
    MemoryTrainer,
    WideInputs,
    emmn_config,
    load_frozen,
    load_memory_data,
    ordered_emotions,
    probe_dims,
)
from pipeline.models.audio import ARCH
from pipeline.models.emmn import EmmnNet
from pipeline.models.memory import a2m_loss
from pipeline.training.distributed import shard
from pipeline.training.fit import fit
from pipeline.training.loop import count_parameters, seed_all, step_rngs, torch_threads


def predicted_mouth(model: EmmnNet, batch: Batch) -> torch.Tensor:
    """f^_m = D_m(E_c(mfcc), E_i(image)) of a batch, through the E_c being trained (Eq. 6's prediction)."""
    return model.mouth_decoder(model.content_features(batch.mfcc), model.identity_encoder(batch.image))


@torch.no_grad()
def mouth_errors(model: EmmnNet, trainer: MemoryTrainer, clips: pd.DataFrame, mean_f_m: torch.Tensor
                 ) -> dict[str, Any]:
    """Mean per-frame ||f^_m - f_m||_2 over `clips` (each predicted whole, e_c windowed as at inference), next to
    the training mean f_m's: the numbers of memory.json's mouth_err / mouth_err_mean_predictor."""
    model.eval()
    errors, baseline, frames = [], [], 0
    for k in clips.index:
        _, batch = trainer.clip_batch(int(k))
        mouth = model.mouth_decoder(model.encode_content(batch.mfcc), model.identity_encoder(batch.image))
        errors.append(float((mouth - batch.f_m).norm(dim=-1).mean()))
        baseline.append(float((batch.f_m - mean_f_m).norm(dim=-1).mean()))
        frames += batch.f_m.shape[1]
    if not errors:
        return {"mouth_err": None, "mouth_err_mean_predictor": None, "clips": 0, "frames": 0}
    return {"mouth_err": round(float(np.mean(errors)), 6),
            "mouth_err_mean_predictor": round(float(np.mean(baseline)), 6), "clips": len(errors), "frames": frames}


def memory_params_for_pretraining(memory: TrainMemoryParams, p: PretrainMouthParams) -> TrainMemoryParams:
    """train_memory's Audio2Mouth layout (E_i, D_m sizes) with this stage's batch, window and lr; no memory terms."""
    return with_field(memory, variant="emmn", tune_content=False, temporal_expression=False, pretrain_wide=True,
                      batch_size=p.batch_size, window=p.window, lr=p.lr, cross_actor_emotion=0.0)


def pretrain_mouth(corpus_dir: Path, keypoints: Path, motion_store: Path, audio_store: Path, audio_model: Path,
                   motion_model: Path, wide: WideInputs | None, model_out: Path, losses_csv: Path, base: BaseParams,
                   p: PretrainMouthParams, memory: TrainMemoryParams, *, prosody_store: Path | None = None,
                   log=print) -> dict[str, Any]:
    """Pre-train E_c (+ E_i, D_m) on L_a2m; write `model_out` (audio.pt layout) and the loss log; return the
    report (held-out corpus actors, the wide set's held-out identities, training actors)."""
    if not 0.0 <= p.corpus_share <= 1.0:
        raise InputError("params.yaml", f"pretrain_mouth.corpus_share must lie in [0, 1], not {p.corpus_share}")
    with torch_threads(p.threads):
        return _pretrain(corpus_dir, keypoints, motion_store, audio_store, audio_model, motion_model, wide, model_out,
                         losses_csv, base, p, memory_params_for_pretraining(memory, p), prosody_store, log)


def _pretrain(corpus_dir: Path, keypoints: Path, motion_store: Path, audio_store: Path, audio_model: Path,
              motion_model: Path, wide: WideInputs | None, model_out: Path, losses_csv: Path, base: BaseParams,
              p: PretrainMouthParams, mp: TrainMemoryParams, prosody_store: Path | None, log) -> dict[str, Any]:
    device = pick_device(base.device)
    audio, audio_ckpt, motion, _ = load_frozen(Path(audio_model), Path(motion_model))
    needs_prosody = bool(getattr(audio, "needs_prosody", False))
    if needs_prosody and prosody_store is None:
        raise InputError(audio_model, "its emotion encoder hears prosody: pass the prosody store")
    data = load_memory_data(Path(corpus_dir), Path(keypoints), Path(motion_store), Path(audio_store),
                            mel=bool(getattr(audio, "needs_mel", False)),
                            prosody=Path(prosody_store) if needs_prosody else None, wide=wide)
    train_clips = data.split("train")
    config = emmn_config(mp, probe_dims(audio, motion), data.value.shape[1], (),
                         ordered_emotions(list(train_clips.emotion)), tuple(sorted(set(train_clips.level))))
    seed_all(base.seed)
    model = EmmnNet(config, audio, motion)
    trainer = MemoryTrainer(model, data, mp, device)
    # E_c itself (not a copy) is trained, so the audio encoders written below carry it; its BatchNorm stays in
    # eval mode with train_audio's statistics (EmmnNet.train keeps the audio encoders in eval)
    model.content_encoder = model.audio.con_encoder.requires_grad_(True)
    trained = {"content_encoder": model.content_encoder, "identity_encoder": model.identity_encoder,
               "mouth_decoder": model.mouth_decoder}
    optimizer = torch.optim.Adam([q for m in trained.values() for q in m.parameters()], lr=p.lr)
    has_wide = len(trainer.wide_index) > 0
    log(f"pretrain_mouth: {len(trainer.train_index)} corpus training clips, {len(trainer.wide_index)} wide-set clips "
        f"(corpus share {p.corpus_share if has_wide else 1.0}); {count_parameters(*trained.values()) / 1e6:.2f}M "
        f"trainable parameters; device {device}")

    def step_fn(step: int) -> dict[str, float]:
        rng, _ = step_rngs(base.seed, step)
        from_corpus = not has_wide or rng.random() < p.corpus_share
        batch = shard(trainer.sample(rng) if from_corpus else trainer.sample_wide(rng))
        model.train()
        loss = a2m_loss(batch.f_m, predicted_mouth(model, batch))  # Eq. 6
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"a2m": float(loss.detach())}

    report: dict[str, Any] = {}

    def finish(step: int) -> None:
        from pipeline.corpus.manifest import select_evenly

        mean_f_m = trainer.f_m[torch.from_numpy(data.rows(train_clips)).to(device)].mean(0)
        test = data.split("test")
        train_scored = train_clips[train_clips.clip_id.isin(select_evenly(list(train_clips.clip_id), len(test)))]
        report.update({
            "heldout": mouth_errors(model, trainer, test, mean_f_m),
            "wide_heldout": mouth_errors(model, trainer, data.split("wide_test"), mean_f_m),
            "train": mouth_errors(model, trainer, train_scored, mean_f_m),
            "info": {"steps": step, "corpus_share": p.corpus_share if has_wide else 1.0,
                     "wide_training_clips": len(trainer.wide_index), "window": trainer.window,
                     "heldout_actors": sorted(test.actor.unique()),
                     "what": "mouth_err = mean per-frame ||D_m(E_c, E_i) - f_m||_2 (Eq. 6), each clip whole; "
                             "the mean predictor always says the training actors' mean f_m"}})
        for part in ("heldout", "wide_heldout"):
            r = report[part]
            r["ratio_to_mean_predictor"] = (round(r["mouth_err"] / r["mouth_err_mean_predictor"], 4)
                                            if r["mouth_err"] is not None else None)

    def metrics(step: int, recent: dict[str, float]) -> dict[str, Any]:
        return {"steps": step, "pretrain_mouth": {**as_dict(p), "memory_layout": as_dict(mp)},
                **{f"final_{k}": round(v, 6) for k, v in recent.items()}}

    # audio.pt's config (front-end, encoder layout) and its module key: the file loads as audio.pt does
    fit(step_fn, stage="pretrain_mouth", out=Path(model_out), losses_csv=losses_csv, config=audio_ckpt["config"],
        modules={ARCH: model.audio, "identity_encoder": model.identity_encoder, "mouth_decoder": model.mouth_decoder},
        optimizers={"optimizer": optimizer}, p=p, metrics=metrics, finish=finish, log=log)
    return report


__all__ = ["memory_params_for_pretraining", "mouth_errors", "predicted_mouth", "pretrain_mouth"]
