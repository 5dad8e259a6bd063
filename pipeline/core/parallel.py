"""Map work over clips with Dask: a real cluster when one is named, else a local one, else in-process.

`scheduler_address` (params) or `DASK_SCHEDULER_ADDRESS` reaches a running scheduler; otherwise a
LocalCluster of `workers` processes with one thread each (torch and BLAS threads pinned to 1: two
processes with two threads each run slower than one thread each on the 2-core machines).
`workers: 0` runs in the calling process, which tests use to stay fast.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)


@contextlib.contextmanager
def dask_client(workers: int, scheduler_address: str | None = None) -> Iterator[Any]:
    """Yield a distributed Client, or None for in-process execution."""
    address = scheduler_address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if not address and workers <= 0:
        yield None
        return
    from distributed import Client, LocalCluster

    if address:
        with Client(address) as client:
            yield client
        return
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      env=env) as cluster, Client(cluster) as client:
        yield client


def ordered_map(fn: Callable[..., Any], items: Iterable[Any], *, client: Any = None, window: int = 8,
                description: str = "working", total: int | None = None) -> Iterator[Any]:
    """Apply fn to items, yielding results in input order with at most `window` tasks in flight.

    In order so that a single writer can stream results into shards; bounded so memory stays flat.
    """
    items = list(items)
    total = len(items) if total is None else total
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        if client is None:
            for item in items:
                yield fn(item)
                bar.advance(task)
            return
        pending: deque = deque()
        it = iter(items)
        for item in it:
            pending.append(client.submit(fn, item, pure=False))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(client.submit(fn, nxt, pure=False))
            bar.advance(task)
            yield result


def progress_bar() -> Progress:
    """A rich bar on a terminal; under DVC (no TTY) rich prints just the final state."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    transient=False)
