"""Generic training helpers shared by every training stage.

* `pick_device`: `base.device` (auto | cpu | cuda) -> torch.device; on GPU deterministic algorithms on.
* `seed_all`, `step_rngs`: global seeding and per-step generators, so a resumed run draws the same
  batches and augmentations as an uninterrupted one.
* `LossLog`: a CSV of (step, each loss) that DVC plots read, written atomically, truncated on resume (its
  PNG is drawn by the `loss_curves` stage, `pipeline.training.curves`, so restyling a plot re-trains nothing).
* `save_training_state` / `load_training_state` / `restore_training_state`: plain-dict checkpoints
  through `pipeline.core.checkpoints`, optimizer state included so training can resume.
* `Budget` + `run_loop`: a loop bounded by steps AND wall-clock minutes (CPU runs must fit the hour),
  with a rich progress bar on a terminal and plain log lines otherwise.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.core.checkpoints import save_checkpoint
from pipeline.core.errors import CheckpointError
from pipeline.core.store import write_text
from pipeline.training.distributed import any_rank, mean_over_ranks

# ------------------------------------------------------------------------------------ device, seeds


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_rngs(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """NumPy and torch (CPU) generators that depend only on (seed, step): resuming replays the same draws."""
    rng = np.random.default_rng([seed, step])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return rng, gen


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when asked, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def count_parameters(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


# -------------------------------------------------------------------------------------------- loss log


class LossLog:
    """CSV `step,<loss...>` that DVC plots with x=step.

    No wall-clock column: a rerun that reproduces the same weights writes the same bytes (timings go to
    `pipeline.core.timings`). Rows are kept in memory and `flush` rewrites the file atomically (temp + rename); the
    loop flushes at every checkpoint and at the end, so the file on disk is never torn and matches the
    checkpoint beside it. The columns are fixed by the first row; a term that joins later (train_fomm's
    `gan_start`) adds its column, 0 in the earlier rows. With `resume_step` an existing log keeps its rows up
    to that step (later rows belong to the interrupted run's unsaved steps) and continues from there.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None, *, write: bool = True):
        self.path = Path(path)
        self.write = write  # False on ranks other than 0: they log (the same means) but never touch the file
        self.columns: list[str] | None = None
        self.rows: list[dict[str, float]] = []
        if resume_step is not None and self.path.is_file():
            # logs of earlier versions carry a `seconds` column: dropped, it is not a loss
            self.rows = [{k: v for k, v in r.items() if k != "seconds"}
                         for r in read_loss_csv(self.path) if r["step"] <= resume_step]
            if self.rows:
                self.columns = list(self.rows[0])
        self.flush()

    def flush(self) -> None:
        if not self.write:
            return
        text = io.StringIO(newline="")
        if self.columns:
            writer = csv.DictWriter(text, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        write_text(self.path, text.getvalue())

    def log(self, step: int, losses: Mapping[str, float]) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in losses.items()}}
        if self.columns is None:
            self.columns = list(row)
        elif list(row) != self.columns:
            if not set(self.columns) <= set(row):
                raise ValueError(f"loss columns changed: {list(row)} vs {self.columns}")
            # a term joined mid-run (train_fomm's gan_start): it was off before, so its earlier rows read 0
            self.columns = list(row)
            self.rows = [{k: r.get(k, 0.0) for k in self.columns} for r in self.rows]
        self.rows.append(row)

    def recent_means(self, last: int = 5) -> dict[str, float]:
        """Mean of each loss over the last `last` logged rows (a less noisy final value)."""
        rows = self.rows[-last:]
        if not rows:
            return {}
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "step"}


def read_loss_csv(path: str | Path) -> list[dict[str, float]]:
    with Path(path).open(newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    for r in rows:
        r["step"] = int(r["step"])
    return rows


# ----------------------------------------------------------------------------------------- checkpoints


def save_training_state(path: str | Path, *, modules: Mapping[str, nn.Module], config: Mapping[str, Any],
                        step: int, metrics: Mapping[str, Any] | None = None,
                        optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
                        extra_modules: Mapping[str, nn.Module] | None = None,
                        train_extra: Mapping[str, Any] | None = None, **extra: Any) -> None:
    """{model: {name: state_dict}, config, step, metrics, train_state: {...}, **extra} via `save_checkpoint`.

    `modules` are what inference needs (`model`); `extra_modules` (e.g. a discriminator), optimizer states and
    `train_extra` (e.g. RNG states) go under `train_state`, which only resuming reads.
    """
    train_state: dict[str, Any] = {name: opt.state_dict() for name, opt in (optimizers or {}).items()}
    train_state.update({name: _cpu_state(m) for name, m in (extra_modules or {}).items()})
    train_state.update(train_extra or {})
    save_checkpoint(path, model={name: _cpu_state(m) for name, m in modules.items()}, config=config, step=step,
                    metrics=metrics, train_state=train_state, **extra)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def restore_training_state(ckpt: Mapping[str, Any], path: str | Path, *, modules: Mapping[str, nn.Module],
                           optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
                           extra_modules: Mapping[str, nn.Module] | None = None) -> int:
    """Load weights (strict) and optimizer states from `ckpt`; return its step."""
    from pipeline.core.checkpoints import load_strict

    train_state = ckpt.get("train_state") or {}
    for name, module in modules.items():
        if name not in ckpt["model"]:
            raise CheckpointError(path, f"no '{name}' in the checkpoint's model")
        load_strict(module, ckpt["model"][name], path)
    for name, module in (extra_modules or {}).items():
        if name not in train_state:
            raise CheckpointError(path, f"cannot resume: no '{name}' in train_state")
        load_strict(module, train_state[name], path)
    for name, opt in (optimizers or {}).items():
        if name not in train_state:
            raise CheckpointError(path, f"cannot resume: no optimizer state '{name}' (not a training checkpoint)")
        opt.load_state_dict(train_state[name])
    return int(ckpt["step"])


# ------------------------------------------------------------------------------------------------ loop


@dataclass
class Budget:
    """Stop at `steps` (total, counting resumed steps) or after `max_minutes` of this run (0 = no limit)."""

    steps: int
    max_minutes: float = 0.0
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def exhausted(self, step: int) -> bool:
        if step >= self.steps:
            return True
        # every rank must stop at the same step, or the others wait forever in the gradient all-reduce
        return self.max_minutes > 0 and any_rank(self.elapsed >= self.max_minutes * 60)


class TrainingProgress:
    """A rich bar on a terminal; plain `name step n/N ... loss=...` lines otherwise (logs under DVC)."""

    def __init__(self, description: str, total: int, start: int, *, interactive: bool | None = None):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.description = description
        self.total = total
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bar = None
        if self.interactive:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[losses]}"), transient=False)
            self._task = self._bar.add_task(description, total=total, completed=start, losses="")

    def __enter__(self) -> TrainingProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, step: int, losses: Mapping[str, float], elapsed: float, *, log_line: bool) -> None:
        text = " ".join(f"{k}={v:.4g}" for k, v in losses.items())
        if self._bar is not None:
            self._bar.update(self._task, completed=step, losses=text)
        elif log_line:
            print(f"{self.description} step {step}/{self.total} {elapsed:7.1f}s {text}", flush=True)


def run_loop(step_fn: Callable[[int], Mapping[str, float]], *, start_step: int, budget: Budget, log: LossLog,
             log_every: int, checkpoint_fn: Callable[[int], None] | None = None, checkpoint_every: int = 0,
             description: str = "training") -> int:
    """Call `step_fn(step)` for step = start_step, start_step+1, ... until the budget is spent.

    Logged losses are the mean over the steps since the last log row; `checkpoint_fn(step)` runs every
    `checkpoint_every` steps, with the log flushed beside it (the caller saves the final state; the log is
    flushed at the end). Returns the number of steps done in total.
    """
    step = start_step
    pending: dict[str, list[float]] = {}
    with TrainingProgress(description, budget.steps, start_step) as progress:
        while not budget.exhausted(step):
            losses = step_fn(step)
            step += 1
            for k, v in losses.items():
                pending.setdefault(k, []).append(float(v))
            if not all(math.isfinite(v) for v in losses.values()):
                raise FloatingPointError(f"{description}: non-finite loss at step {step}: {dict(losses)}")
            last = budget.exhausted(step)
            if step % log_every == 0 or last:
                means = mean_over_ranks({k: float(np.mean(v)) for k, v in pending.items()})
                log.log(step, means)
                progress.update(step, means, budget.elapsed, log_line=True)
                pending = {}
            else:
                progress.update(step, losses, budget.elapsed, log_line=False)
            if checkpoint_fn is not None and checkpoint_every and step % checkpoint_every == 0 and not last:
                log.flush()  # first: a resume truncates a log that ran ahead of its checkpoint, never the reverse
                checkpoint_fn(step)
    log.flush()
    return step


def training_timings(budget: Budget, start_step: int, step: int, seconds_before: float = 0.0) -> dict[str, float]:
    """Wall-clock figures of a run for `pipeline.core.timings` (never for a checkpoint or report: they differ per run)."""
    return {"train_seconds": round(seconds_before + budget.elapsed, 1), "steps": int(step),
            "steps_this_run": int(step - start_step),
            "seconds_per_step": round(budget.elapsed / max(step - start_step, 1), 4)}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Temporarily run torch with `n` intra-op threads (0 = leave as is)."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
