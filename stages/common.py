"""What every stage command shares: the --params option, one-line errors with exit code 2, the Typer app."""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.core.errors import InputError
from pipeline.core.malloc import keep_freed_memory
from pipeline.core.store import exit_on_signals

ParamsOption = Annotated[Path, typer.Option("--params", help="params.yaml to read (sections base + this stage)")]
WideOption = Annotated[Path, typer.Option(help="wide pre-training set folder (read when pretrain_wide is on)")]
WideAudioOption = Annotated[Path, typer.Option(help="the wide set's audio feature store")]


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input -> `error: <file>: <problem>` on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(code=2) from None

    return wrapper


def run_ranks(processes: int, module: str) -> None:
    """`base.processes` > 1: run this training stage again under torchrun with that many ranks (DDP, see
    pipeline.training.distributed) and exit with its status. Inside torchrun, or with 1, it does nothing."""
    from pipeline.training.distributed import launched_ranks

    if processes < 1:
        raise InputError("params.yaml", f"base.processes must be >= 1, not {processes}")
    if processes == 1 or launched_ranks() > 1:
        return
    args = sys.argv[1:]
    command = module.rsplit(".", 1)[-1]
    if args and args[0] == command:  # `emmn <command> ...`: the module takes the options alone
        args = args[1:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
              "-m", module, *args]
    raise typer.Exit(code=subprocess.call(launch))


def stage_app() -> typer.Typer:
    keep_freed_memory()  # every stage process (and its Dask workers): fewer page faults in torch loops
    exit_on_signals()  # SIGTERM unwinds like Ctrl-C: temps removed, ffmpeg and Dask workers stopped
    return typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False)
