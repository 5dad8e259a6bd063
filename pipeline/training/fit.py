"""`fit`: the one training skeleton every trainer runs through.

The trainer brings its step (`step_fn(step) -> losses`, which draws its own batch and updates its own
networks), its modules and optimizers, and the checkpoint's `config` and `metrics`. `fit` owns the rest:
resume (config check, restore of weights, optimizers and torch's global generators, lr from params, the running
train_seconds), the loss log, the step/minute budget, periodic checkpoints, the final save and the timings file.
A run killed after a checkpoint and resumed ends with the weights and log of an unbroken run.

Under torchrun (`pipeline.training.distributed`) `fit` joins the process group, averages gradients before every
optimizer step, logs the ranks' mean losses, stops every rank at the same step, and lets rank 0 alone write; the
other ranks leave the process after the last step (the trainer's step shards its batch with `shard`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.core.checkpoints import load_training_state
from pipeline.core.errors import InputError
from pipeline.core.timings import read_timings, write_timings
from pipeline.training.distributed import (
    join_process_group,
    leave_process_group,
    synchronise_optimizers,
)
from pipeline.training.loop import (
    Budget,
    LossLog,
    restore_training_state,
    run_loop,
    save_training_state,
    training_timings,
)


@dataclass(frozen=True)
class TrainKnobs:
    """The knobs every trainer has, as `fit` reads them from a stage's params section (each train_* section and
    finetune_render carry these keys; `threads` is applied by the trainer around its data loading too)."""

    steps: int
    max_minutes: float
    lr: float
    resume: bool
    checkpoint_every: int
    log_every: int
    threads: int

    @classmethod
    def of(cls, params: Any) -> TrainKnobs:
        missing = [f.name for f in fields(cls) if not hasattr(params, f.name)]
        if missing:
            raise TypeError(f"{type(params).__name__} lacks the trainer knobs {missing}")
        return cls(**{f.name: getattr(params, f.name) for f in fields(cls)})


@dataclass
class Fitted:
    """What a run did: the step reached, the step it started from, its loss log and final metrics."""

    step: int
    start_step: int
    log: LossLog
    metrics: dict[str, Any]
    rng_state: dict[str, Any]  # torch's global generators as the last step left them (before `finish`)


def first_difference(a: Any, b: Any, where: str = "") -> str:
    """`key.sub: checkpoint <a>, params <b>` for the first (sorted) key where two nested dicts differ."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else key)
    return f"{where}: checkpoint {a!r}, params {b!r}"


def global_rng_state() -> dict[str, Any]:
    """torch's global generators (CPU, and each CUDA device once CUDA is up): what dropout and any other
    draw outside `step_rngs` consumes, saved so a resumed run continues the same stream."""
    state: dict[str, Any] = {"torch_rng_state": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda_rng_states"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_rng(train_state: Mapping[str, Any]) -> None:
    """Undo of `global_rng_state` (a checkpoint without it leaves the generators as they are)."""
    if "torch_rng_state" in train_state:
        torch.set_rng_state(train_state["torch_rng_state"])
    if "torch_cuda_rng_states" in train_state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(train_state["torch_cuda_rng_states"])


def fit(step_fn: Callable[[int], Mapping[str, float]], *, stage: str, out: Path, losses_csv: str | Path,
        config: Mapping[str, Any], modules: Mapping[str, nn.Module], p: Any,
        metrics: Callable[[int, Mapping[str, float]], dict[str, Any]],
        optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
        extra_modules: Mapping[str, nn.Module] | None = None,
        fresh_on_resume: Callable[[Mapping[str, Any]], Collection[str]] | None = None,
        finish: Callable[[int], None] | None = None, final_save: bool = True,
        checkpoint_extra: Mapping[str, Any] | None = None, log=print) -> Fitted:
    """Train with `step_fn` until `p.steps` (or `p.max_minutes`), resuming from `out` when `p.resume`.

    `metrics(step, recent_losses)` fills each checkpoint's metrics. `fresh_on_resume(ckpt)` names the
    optimizers / extra modules a resume leaves as initialised. `finish(step)` runs after the last step,
    before the final save; with `final_save` false the caller saves `out` itself (timings are written
    either way, and `Fitted.rng_state` is what its train_state should carry). `checkpoint_extra`: further
    top-level checkpoint entries (emmn.pt's embedded frozen parts).
    `p` is the stage's params section; its `TrainKnobs` fields drive the loop.
    """
    p = TrainKnobs.of(p)
    optimizers, extra_modules = dict(optimizers or {}), dict(extra_modules or {})
    rank = join_process_group()
    hooks = synchronise_optimizers(optimizers)
    start_step, seconds_before = 0, 0.0
    if p.resume and out.is_file():
        ckpt = load_training_state(out)
        if ckpt["config"] != config:
            raise InputError(out, f"cannot resume, model config differs from params ("
                             f"{first_difference(ckpt['config'], config)}); set {stage}.resume: false to start over")
        fresh = set(fresh_on_resume(ckpt)) if fresh_on_resume else set()
        start_step = restore_training_state(
            ckpt, out, modules=modules, optimizers={k: v for k, v in optimizers.items() if k not in fresh},
            extra_modules={k: v for k, v in extra_modules.items() if k not in fresh})
        restore_global_rng(ckpt.get("train_state") or {})
        for opt in optimizers.values():  # a changed lr in params applies to the resumed run
            for group in opt.param_groups:
                group["lr"] = p.lr
        seconds_before = float(read_timings(out).get("train_seconds", 0.0))
        log(f"{stage}: resumed at step {start_step} from {out}")
    loss_log = LossLog(losses_csv, resume_step=start_step if start_step else None, write=rank.leader)
    budget = Budget(p.steps, p.max_minutes)

    def save(step: int, rng_state: dict[str, Any] | None = None) -> None:
        if not rank.leader:
            return
        save_training_state(out, modules=modules, config=config, step=step,
                            metrics=metrics(step, loss_log.recent_means()), optimizers=optimizers,
                            extra_modules=extra_modules, train_extra=rng_state or global_rng_state(),
                            **dict(checkpoint_extra or {}))
        write_timings(out, training_timings(budget, start_step, step, seconds_before))

    step = run_loop(step_fn, start_step=start_step, budget=budget, log=loss_log, log_every=p.log_every,
                    checkpoint_fn=save, checkpoint_every=p.checkpoint_every, description=stage)
    for hook in hooks:
        hook.remove()
    if not rank.leader:  # evaluation, reports and the checkpoint are rank 0's: this rank's work is done
        leave_process_group()
        raise SystemExit(0)
    if step < p.steps:  # the budget is the step count; a binding guard makes the weights depend on the machine
        log(f"{stage}: WARNING max_minutes ({p.max_minutes:g}) stopped training at step {step} of {p.steps}: the result "
            f"depends on this machine's speed (raise {stage}.max_minutes)")
    rng_state = global_rng_state()  # what a longer run would continue from, whatever `finish` draws
    if finish is not None:
        finish(step)
    if final_save:
        save(step, rng_state)
    else:
        write_timings(out, training_timings(budget, start_step, step, seconds_before))
    log(f"{stage}: {step - start_step} steps in {budget.elapsed:.0f}s" + (f" -> {out}" if final_save else ""))
    return Fitted(step, start_step, loss_log, metrics(step, loss_log.recent_means()), rng_state)
