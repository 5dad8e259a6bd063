"""pipeline.training.fit: resume equals an unbroken run, lr comes from params, one refusal wording, fresh parts."""

from dataclasses import dataclass

import pytest
import torch

from pipeline.core.errors import InputError
from pipeline.training.fit import fit
from pipeline.training.loop import read_loss_csv, step_rngs


@dataclass(frozen=True)
class Knobs:
    steps: int = 6
    max_minutes: float = 0.0
    lr: float = 0.1
    resume: bool = False
    checkpoint_every: int = 2
    log_every: int = 2
    threads: int = 0


def run(tmp_path, name: str, p: Knobs, config=None, fresh=(), log=lambda s: None):
    torch.manual_seed(0)
    net, critic = torch.nn.Linear(3, 1), torch.nn.Linear(1, 1)
    optimizers = {"optimizer": torch.optim.SGD(net.parameters(), lr=p.lr),
                  "optimizer_c": torch.optim.SGD(critic.parameters(), lr=p.lr)}

    def step_fn(step: int) -> dict[str, float]:
        _, gen = step_rngs(0, step)
        keep = torch.nn.functional.dropout(torch.ones(4, 1), 0.5)  # the global generator, as dropout draws it
        loss = (keep * critic(net(torch.randn(4, 3, generator=gen))) ** 2).mean()
        for opt in optimizers.values():
            opt.zero_grad()
        loss.backward()
        for opt in optimizers.values():
            opt.step()
        return {"loss": float(loss.detach())}

    fitted = fit(step_fn, stage="toy", out=tmp_path / f"{name}.pt", losses_csv=tmp_path / f"{name}.csv",
                 config=config or {"width": 3}, modules={"net": net}, optimizers=optimizers,
                 extra_modules={"critic": critic}, p=p, metrics=lambda step, recent: {"steps": step, **recent},
                 fresh_on_resume=lambda ckpt: fresh, log=log)
    return net, optimizers, fitted


def test_resume_equals_unbroken_and_takes_lr_from_params(tmp_path):
    """Also what the steps draw from torch's global generator (dropout) continues where the checkpoint was."""
    straight, _, fitted = run(tmp_path, "a", Knobs())
    assert fitted.step == 6 and fitted.metrics["steps"] == 6
    run(tmp_path, "b", Knobs(steps=4))
    resumed, optimizers, fitted = run(tmp_path, "b", Knobs(resume=True))
    assert fitted.start_step == 4 and fitted.step == 6
    assert torch.equal(straight.weight, resumed.weight) and torch.equal(straight.bias, resumed.bias)
    assert read_loss_csv(tmp_path / "a.csv") == read_loss_csv(tmp_path / "b.csv")

    _, optimizers, _ = run(tmp_path, "b", Knobs(steps=7, lr=0.05, resume=True))
    assert {g["lr"] for opt in optimizers.values() for g in opt.param_groups} == {0.05}


def test_a_binding_wall_clock_guard_is_a_warning(tmp_path, monkeypatch):
    """max_minutes is a guard; when it stops a run before its steps, the weights depend on the machine: say so
    (an 8-minute guard cut Wav2Lip at step 903 and the pseudo labels broke unnoticed)."""
    import pipeline.training.loop as loop

    lines = []
    monkeypatch.setattr(loop.Budget, "exhausted", lambda self, step: step >= 3)  # the guard binds at step 3
    _, _, fitted = run(tmp_path, "g", Knobs(steps=100, max_minutes=2.0), log=lines.append)
    assert fitted.step == 3
    assert any("toy: WARNING max_minutes (2) stopped training at step 3 of 100" in s for s in lines)
    lines.clear()
    monkeypatch.undo()
    run(tmp_path, "h", Knobs(), log=lines.append)
    assert not any("WARNING" in s for s in lines)


def test_refuses_another_config_naming_the_key(tmp_path):
    run(tmp_path, "a", Knobs(steps=2))
    with pytest.raises(InputError, match=r"a\.pt.*cannot resume, model config differs from params \(width: "
                                         r"checkpoint 3, params 4\); set toy\.resume: false"):
        run(tmp_path, "a", Knobs(resume=True), config={"width": 4})


@pytest.mark.parametrize("fresh", [(), ("critic", "optimizer_c")])
def test_fresh_on_resume_leaves_named_parts_as_initialised(tmp_path, fresh):
    run(tmp_path, "a", Knobs(steps=2))
    saved = torch.load(tmp_path / "a.pt", weights_only=True)["train_state"]["critic"]["weight"]
    critic = torch.nn.Linear(1, 1)
    initial = critic.weight.detach().clone()
    seen = {}

    def step_fn(step: int) -> dict[str, float]:
        seen.setdefault("weight", critic.weight.detach().clone())
        return {"loss": 0.0}

    fit(step_fn, stage="toy", out=tmp_path / "a.pt", losses_csv=tmp_path / "a.csv", config={"width": 3},
        modules={"net": torch.nn.Linear(3, 1)}, optimizers={"optimizer_c": torch.optim.SGD(critic.parameters(), 0.1)},
        extra_modules={"critic": critic}, p=Knobs(steps=3, resume=True), metrics=lambda step, recent: {},
        fresh_on_resume=lambda ckpt: fresh, log=lambda s: None)
    assert torch.equal(seen["weight"], initial if fresh else saved)
