"""Nothing left behind: real processes killed (SIGTERM, SIGINT, SIGKILL) while they write an output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.core.store import atomic_output
from tests.conftest import ROOT, tiny_params_dict

CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# writes into atomic_output's temp, says so, then waits to be killed
WRITER = """
import sys, time
from pipeline.core.store import atomic_output
with atomic_output(sys.argv[1]) as tmp:
    tmp.mkdir()
    (tmp / "part").write_text("half written")
    print("writing", flush=True)
    time.sleep(60)
"""

# an mp4 streamed to ffmpeg: some frames piped, then waits to be killed
MP4_WRITER = """
import sys, time
import numpy as np
from pipeline.core.mp4_stream import Mp4StreamWriter
with Mp4StreamWriter(sys.argv[1], 32, 32, 25.0) as w:
    w.write(np.zeros((30, 32, 32, 3), np.uint8))
    w._proc.stdin.flush()
    print(w._proc.pid, flush=True)
    time.sleep(60)
"""


def _as_at_a_terminal() -> None:
    """SIGINT back to its default in the child: a shell starts background jobs with SIGINT ignored, and Python
    keeps an inherited ignore, so under `pytest &` the child would never see the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(code: str, target: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True,
                            env=CHILD_ENV, cwd=ROOT, preexec_fn=_as_at_a_terminal)
    return proc, proc.stdout.readline().strip()


def _siblings(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir())


def _wait_for_temp(target: Path) -> None:
    deadline = time.monotonic() + 10  # ffmpeg opens its output once it has read some input
    while not _siblings(target) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_siblings(target)) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_writing_leaves_nothing(tmp_path, sig):
    target = tmp_path / "out.zarr"
    proc, line = _start(WRITER, target)
    assert line == "writing"
    assert len(_siblings(target)) == 1  # the temp exists while it writes
    proc.send_signal(sig)
    assert proc.wait(timeout=20) != 0
    assert _siblings(target) == []


def test_sigkill_leftover_is_removed_by_the_next_run(tmp_path):
    target = tmp_path / "out.zarr"
    proc, _ = _start(WRITER, target)
    proc.kill()
    proc.wait(timeout=20)
    (leftover,) = _siblings(target)  # SIGKILL cannot be caught: the dead writer's temp stays ...
    assert str(proc.pid) in leftover
    with atomic_output(target) as tmp:  # ... until the next run of the same output sweeps it
        tmp.mkdir()
    assert _siblings(target) == ["out.zarr"]


def test_live_writers_temp_is_not_swept(tmp_path):
    target = tmp_path / "out.zarr"
    proc, _ = _start(WRITER, target)
    try:
        (theirs,) = _siblings(target)
        with atomic_output(target) as tmp:
            tmp.mkdir()
        assert theirs in _siblings(target)  # another live process's temp of the same path is its own business
    finally:
        proc.kill()
        proc.wait(timeout=20)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_sigterm_on_mp4_stream_stops_ffmpeg_and_leaves_no_temp(tmp_path):
    target = tmp_path / "o.mp4"
    proc, ffmpeg_pid = _start(MP4_WRITER, target)
    _wait_for_temp(target)
    proc.terminate()
    assert proc.wait(timeout=20) != 0
    assert _siblings(target) == []
    deadline = time.monotonic() + 5
    while not _gone(int(ffmpeg_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(int(ffmpeg_pid))


def test_sigkill_on_mp4_stream_then_rerun(tmp_path):
    from pipeline.core.mp4_stream import Mp4StreamWriter

    target = tmp_path / "o.mp4"
    proc, _ = _start(MP4_WRITER, target)
    _wait_for_temp(target)
    proc.kill()
    proc.wait(timeout=20)
    time.sleep(0.5)  # the orphaned ffmpeg sees EOF and finishes its temp: a complete-looking leftover
    assert len(_siblings(target)) == 1
    with Mp4StreamWriter(target, 32, 32, 25.0) as w:
        w.write(np.zeros((3, 32, 32, 3), np.uint8))
    assert _siblings(target) == ["o.mp4"]


def test_sigterm_on_the_corpus_stage_leaves_nothing(tmp_path):
    """The real stage command (tiny profile), terminated while it renders, as `dvc repro` would be."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params_dict()))
    out, sheet, report = tmp_path / "data" / "corpus", tmp_path / "sheet.png", tmp_path / "corpus.json"
    proc = subprocess.Popen([sys.executable, "-m", "stages.corpus", "--params", str(params), "--out", str(out),
                             "--sheet", str(sheet), "--report", str(report)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "err.log", "w"), env=CHILD_ENV, cwd=ROOT)
    deadline = time.monotonic() + 60
    while not list(out.parent.glob(".corpus.tmp-*/frames.zarr")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the stage ended before it could be terminated mid-write"
    proc.terminate()
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(out.parent.iterdir()) == []
    assert not sheet.exists() and not report.exists()
