"""Training Motion Reconstruction (paper §3.2): E_e, E_m, D_{e,m} on keypoints of the pseudo-pair quadruples.

One step: `batch_size` quadruples drawn with replacement, and for each a uniform target frame t of y^{i,b}
and t' of y^{j,a}; the six aligned frames (pipeline/motion/data.py) are encoded once by both encoders,
then (all decoded with the actor's (p_neu, j_neu)):
  Eq. 1  D(f_e[x_ia], f_m[x_jb_m]) vs y_ib,   D(f_e[x_jb], f_m[x_ia_m]) vs y_ja
  Eq. 2  D(f_e[x_ia], f_m[x_ia])   vs x_ia,   D(f_e[x_jb], f_m[x_jb])   vs x_jb
  Eq. 3  f_e[x_ia] ~ f_e[y_ib],  f_e[x_jb] ~ f_e[y_ja]
  Eq. 4  f_m[x_ia_m] ~ f_m[y_ja], f_m[x_jb_m] ~ f_m[y_ib]
  Eq. 5  L_dis = use_rec L_rec + use_self L_self + use_con (lambda_e L_e-con + lambda_m L_m-con)
  (ours) + lambda_m_center x the between-actor share of f_m's variance over the real frames (actor_centering_loss)
Every term is logged (unweighted) whether or not it is switched on, so ablations stay comparable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.core.config import BaseParams, TrainMotionParams, as_dict
from pipeline.core.errors import InputError
from pipeline.core.precision import pick_device
from pipeline.models.motion import MotionConfig, MotionNet, init_motion
from pipeline.motion.data import (
    KeypointBank,
    QuadrupleFrames,
    counterfactual_targets,
    label_weights,
    read_pairs,
    read_sync,
    select_quadruples,
)
from pipeline.motion.losses import (
    DisentanglementWeights,
    actor_centering_loss,
    cross_reconstruction_loss,
    disentanglement_loss,
    expression_consistency_loss,
    mouth_consistency_loss,
    self_reconstruction_loss,
)
from pipeline.training.distributed import shard
from pipeline.training.fit import fit
from pipeline.training.loop import (
    count_parameters,
    seed_all,
    step_rngs,
    torch_threads,
)

NORMALIZATION_SAMPLES = 20000  # quadruple draws (x 6 frames) for the input / residual statistics
RECALIBRATION_BATCHES = 50  # training batches whose exact feature statistics replace the BatchNorm running ones


def motion_config(p: TrainMotionParams, num_kp: int) -> MotionConfig:
    return MotionConfig(num_kp=num_kp, expression_dim=p.expression_dim, mouth_dim=p.mouth_dim, hidden=p.hidden,
                        layers=p.layers, relative_input=p.relative_input, neutral_to_decoder=p.neutral_to_decoder,
                        feature_norm=p.feature_norm)


def loss_weights(p: TrainMotionParams) -> DisentanglementWeights:
    """Eq. 5 weights after the ablation switches."""
    con = 1.0 if p.use_con else 0.0
    return DisentanglementWeights(rec=float(p.use_rec), self_rec=float(p.use_self), e_con=con * p.lambda_e_con,
                                  m_con=con * p.lambda_m_con)


def real_rows(roles: list[str], batch: int, device: torch.device) -> torch.Tensor:
    """Bool mask over the role-major concatenation of a batch: True for the real corpus frames (x_*), whose
    statistics alone normalise f_e and f_m (see pipeline.models.motion: labels must not set the scale)."""
    return torch.tensor([r.startswith("x_") for r in roles], device=device).repeat_interleave(batch)


class MotionTrainer:
    """The network, its optimizer and the keypoints on the training device; `train_step` does one update."""

    def __init__(self, config: MotionConfig, p: TrainMotionParams, device: torch.device, seed: int,
                 bank: KeypointBank, quads: QuadrupleFrames):
        self.p, self.device, self.quads = p, device, quads
        self.weights = loss_weights(p)
        if not any((self.weights.rec, self.weights.self_rec, self.weights.e_con, self.weights.m_con)):
            raise InputError("params.yaml", "train_motion: every loss term is switched off")
        self.net: MotionNet = init_motion(config, seed)
        self.value = torch.from_numpy(bank.value).to(device)
        self.jacobian = torch.from_numpy(bank.jacobian).to(device)
        self.ref_value = torch.from_numpy(bank.reference_value).to(device)
        self.ref_jacobian = torch.from_numpy(bank.reference_jacobian).to(device)
        self._set_normalization(bank, seed)
        self.net.to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=p.lr)

    def _set_normalization(self, bank: KeypointBank, seed: int) -> None:
        """Input and residual statistics from a fixed, seeded draw of training frames."""
        rows, actor, _ = self.quads.sample(np.random.default_rng([seed, 6]), NORMALIZATION_SAMPLES)
        all_rows = np.concatenate([rows[r] for r in rows])
        actors = np.tile(actor, len(rows))
        motion = np.concatenate([bank.value[all_rows].reshape(len(all_rows), -1),
                                 bank.jacobian[all_rows].reshape(len(all_rows), -1)], axis=1)
        neutral = np.concatenate([bank.reference_value[actors].reshape(len(actors), -1),
                                  bank.reference_jacobian[actors].reshape(len(actors), -1)], axis=1)
        self.net.set_normalization(motion, motion - neutral)

    @torch.no_grad()
    def recalibrate_feature_norms(self, seed: int, batches: int = RECALIBRATION_BATCHES) -> int:
        """Replace the BatchNorm running statistics of f_e and f_m by exact averages over a seeded draw of
        training frames (all six roles, as in training); returns how many norms were recalibrated.

        Why: the running averages drift behind the batch statistics during training (the pre-norm scale is
        free to change under BatchNorm), and on the default run that made eval-mode reconstruction 25x worse
        than train mode (value error 0.71 vs 0.019); exact averages brought it to 0.003.
        """
        norms = [m for m in self.net.modules() if isinstance(m, torch.nn.BatchNorm1d)]
        if not norms:
            return 0
        saved = [n.momentum for n in norms]
        for n in norms:
            n.reset_running_stats()
            n.momentum = None  # cumulative average over the recalibration batches
        self.net.train()
        rng = np.random.default_rng([seed, 7])
        for _ in range(batches):
            rows, actor, _ = self.quads.sample(rng, self.p.batch_size)
            idx = torch.from_numpy(np.concatenate([rows[r] for r in rows])).to(self.device)
            a = torch.from_numpy(np.tile(actor, len(rows))).to(self.device)
            self.net.encode(self.value[idx], self.jacobian[idx], self.ref_value[a], self.ref_jacobian[a],
                            stats_rows=real_rows(list(rows), len(actor), self.device))
        for n, momentum in zip(norms, saved):
            n.momentum = momentum
        self.net.eval()
        return len(norms)

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"motion": self.net}

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer": self.optimizer}

    def losses(self, rows: dict[str, np.ndarray], actor: np.ndarray,
               label_weight: dict[str, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
        """Eq. 1-5 for one batch: the four unweighted terms, m_center and `total` (L_dis + weighted m_center);
        `label_weight` {y_ib, y_ja: (B,)} drops untrusted targets (see pipeline.motion.losses)."""
        batch = len(actor)
        order = list(rows)
        idx = torch.from_numpy(np.concatenate([rows[r] for r in order])).to(self.device)
        value, jacobian = self.value[idx], self.jacobian[idx]
        a = torch.from_numpy(actor).to(self.device)
        neu_v, neu_j = self.ref_value[a], self.ref_jacobian[a]  # all six frames of a quadruple: one actor
        f_e_all, f_m_all = self.net.encode(value, jacobian, neu_v.repeat(len(order), 1, 1),
                                           neu_j.repeat(len(order), 1, 1, 1),
                                           stats_rows=real_rows(order, batch, self.device))
        f_e = dict(zip(order, f_e_all.split(batch)))
        f_m = dict(zip(order, f_m_all.split(batch)))
        target = dict(zip(order, zip(value.split(batch), jacobian.split(batch))))

        def decode(expression: str, mouth: str) -> tuple[torch.Tensor, torch.Tensor]:
            return self.net.decode(f_e[expression], f_m[mouth], neu_v, neu_j)

        w = self.p.jacobian_weight
        lw = {k: None if label_weight is None else torch.as_tensor(label_weight[k], device=self.device)
              for k in ("y_ib", "y_ja")}
        l_rec = cross_reconstruction_loss(decode("x_ia", "x_jb_m"), target["y_ib"], decode("x_jb", "x_ia_m"),
                                          target["y_ja"], w, lw["y_ib"], lw["y_ja"])
        l_self = self_reconstruction_loss(decode("x_ia", "x_ia"), target["x_ia"], decode("x_jb", "x_jb"),
                                          target["x_jb"], w)
        l_e_con = expression_consistency_loss(f_e["x_ia"], f_e["y_ib"], f_e["x_jb"], f_e["y_ja"], lw["y_ib"],
                                              lw["y_ja"])
        l_m_con = mouth_consistency_loss(f_m["x_ia_m"], f_m["y_ja"], f_m["x_jb_m"], f_m["y_ib"], lw["y_ja"],
                                         lw["y_ib"])
        real = real_rows(order, batch, self.device)  # labels no loss trusts (weight 0) must not set the share
        l_m_center = actor_centering_loss(f_m_all[real], a.repeat(len(order))[real])
        total = (disentanglement_loss(l_rec, l_self, l_e_con, l_m_con, self.weights)
                 + self.p.lambda_m_center * l_m_center)
        return {"total": total, "rec": l_rec, "self": l_self, "e_con": l_e_con, "m_con": l_m_con,
                "m_center": l_m_center}

    def train_step(self, rows: dict[str, np.ndarray], actor: np.ndarray,
                   label_weight: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        self.net.train()
        losses = self.losses(rows, actor, label_weight)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in losses.items()}


LABELS = ("pseudo", "counterfactual", "exact")


def training_quadruples(pairs: pd.DataFrame, sync: pd.DataFrame | None, p: TrainMotionParams,
                        sync_path: str | Path, bank: KeypointBank
                        ) -> tuple[pd.DataFrame, dict[str, np.ndarray] | None]:
    """The quadruples to train on and their label weights (None: every label counts).

    labels pseudo: the quadruples whose two re-dubs sync_filter kept (all with use_filter false).
    labels counterfactual: every quadruple with an exact render among its targets; its other target, a
    Wav2Lip re-dub, counts only if sync_filter kept it (or use_filter is false). With the default run's
    Wav2Lip (0 re-dubs kept) training on the rejected re-dubs taught the opposite of the exact targets —
    they mostly keep the source's own mouth — and f_m ended up carrying no mouth at all.
    labels exact: the same quadruples, but only the exact renders count; every Wav2Lip target weighs 0."""
    if p.labels not in LABELS:
        raise InputError("params.yaml", f"train_motion.labels must be one of {LABELS}, not {p.labels!r}")
    if p.labels in ("counterfactual", "exact"):
        chosen = counterfactual_targets(pairs, bank.has_clip)
        if chosen.empty:
            raise InputError(bank.path, "no quadruple has both counterfactual renders (corpus.counterfactuals: 0?)")
        if p.labels == "exact":
            return chosen, {t: chosen[f"{t}_exact"].to_numpy(np.float32) for t in ("y_ib", "y_ja")}
        return chosen, label_weights(chosen, sync, p.use_filter)
    chosen = select_quadruples(pairs, sync, p.use_filter, sync_path)
    if chosen.empty:
        raise InputError(sync_path, f"none of the {len(pairs)} quadruples has both pseudo clips kept by sync_filter "
                                    "(lower sync_filter.threshold, or train_motion.use_filter: false)")
    return chosen, None


def train_motion_model(kp_store: str | Path, pairs: pd.DataFrame, sync: pd.DataFrame | None, model_out: str | Path,
                       losses_csv: str | Path, base: BaseParams, p: TrainMotionParams, *, sync_path: str | Path = "",
                       log=print) -> dict[str, Any]:
    """Train on the (kept) quadruples and write `model_out` + the loss log; return the checkpoint's metrics."""
    model_out = Path(model_out)
    bank = KeypointBank(kp_store)
    chosen, weight = training_quadruples(pairs, sync, p, sync_path, bank)
    quads = QuadrupleFrames.build(chosen, bank, weight)
    if weight is not None:
        trusted = {t: float(w.mean()) for t, w in weight.items()}
        log(f"train_motion: share of trusted labels y_ib {trusted['y_ib']:.3f}, y_ja {trusted['y_ja']:.3f}")
    bank.check_finite(quads.used_rows())
    config = motion_config(p, bank.num_kp)
    with torch_threads(p.threads):
        return _train(config, bank, quads, len(pairs), model_out, losses_csv, base, p, log)


def _train(config: MotionConfig, bank: KeypointBank, quads: QuadrupleFrames, all_quadruples: int, model_out: Path,
           losses_csv: str | Path, base: BaseParams, p: TrainMotionParams, log) -> dict[str, Any]:
    device = pick_device(base.device)
    seed_all(base.seed)
    trainer = MotionTrainer(config, p, device, base.seed, bank, quads)
    log(f"train_motion: {len(quads)} of {all_quadruples} quadruples (labels {p.labels}, use_filter {p.use_filter}); "
        "weights "
        f"{trainer.weights}; {count_parameters(trainer.net) / 1e3:.0f}k parameters; device {device}")

    def step_fn(step: int) -> dict[str, float]:
        rng, _ = step_rngs(base.seed, step)
        rows, actor, label_weight = shard(quads.sample(rng, p.batch_size))
        return trainer.train_step(rows, actor, label_weight)

    def metrics(step: int, recent: dict[str, float]) -> dict[str, Any]:
        return {"steps": step, "parameters": count_parameters(trainer.net), "quadruples": len(quads),
                "quadruples_all": int(all_quadruples), "train_params": as_dict(p),
                **{f"final_{k}": round(v, 6) for k, v in recent.items()}}

    return fit(step_fn, stage="train_motion", out=model_out, losses_csv=losses_csv, config=config.as_dict(),
               modules=trainer.modules, optimizers=trainer.optimizers, p=p, metrics=metrics,
               finish=lambda step: trainer.recalibrate_feature_norms(base.seed), log=log).metrics


__all__ = ["MotionTrainer", "loss_weights", "motion_config", "real_rows", "train_motion_model", "training_quadruples"]


def run_train_motion(kp_store: Path, pseudo_dir: Path, model_out: Path, losses_csv: Path, base: BaseParams,
                     p: TrainMotionParams, log=print) -> dict:
    """Train Motion Reconstruction from the keypoints and pseudo-pair folder; return the checkpoint's metrics.

    Callable with any params (e.g. `with_field(p, use_rec=False)`): Table 2 trains its rows through it.
    """
    pairs = read_pairs(pseudo_dir)
    sync = read_sync(pseudo_dir) if p.use_filter else None  # counterfactual labels: it judges the re-dub targets
    summary = train_motion_model(kp_store, pairs, sync, model_out, losses_csv, base, p,
                                 sync_path=Path(pseudo_dir) / "sync.parquet", log=log)
    return summary
