"""Kill a trainer mid-run (after a periodic checkpoint) and compare a resumed run with an unbroken one."""

from __future__ import annotations

from pathlib import Path

import torch

import pipeline.training.fit as fit_module


class Killed(Exception):
    """Stands for the process being stopped (an exception pytest itself does not treat specially)."""


def kill_at(monkeypatch, at_step: int) -> None:
    """fit's next run dies when it reaches `at_step` (checkpoint_every must divide it: that checkpoint exists)."""
    real = fit_module.run_loop

    def run_loop(step_fn, **kwargs):
        def dying(step: int):
            if step == at_step:
                raise Killed(f"killed at step {at_step}")
            return step_fn(step)

        return real(dying, **kwargs)

    monkeypatch.setattr(fit_module, "run_loop", run_loop)


def same_weights(a: Path, b: Path) -> bool:
    """Every tensor of the two checkpoints' `model` entries is bit-identical (and the step equal)."""
    first, second = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    if first["step"] != second["step"] or set(first["model"]) != set(second["model"]):
        return False
    return all(torch.equal(first["model"][m][k], second["model"][m][k])
               for m in first["model"] for k in first["model"][m])
