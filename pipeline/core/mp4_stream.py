"""An H.264 + AAC mp4 written frame block by frame block (frames piped to ffmpeg as they are made).

`pipeline.core.media.write_mp4` takes the whole video as one array; a long generated video would not fit in
memory that way. Here ffmpeg reads raw RGB frames from a pipe into a temp file beside the target, which
is renamed into place only when ffmpeg succeeded; on any error (or an exception in the caller's block,
SIGTERM and SIGINT included) ffmpeg is stopped and the temp file removed, so no partial mp4 is ever left.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from pipeline.core.errors import InputError
from pipeline.core.media import ffmpeg_exe
from pipeline.core.store import exit_on_signals, remove_stale_temps, temp_sibling


class Mp4StreamWriter:
    """`with Mp4StreamWriter(out, width, height, fps, audio) as w: w.write(frames_block)`.

    Frames are uint8 RGB (T, height, width, 3); odd sides are padded by one pixel (yuv420p needs even
    sides). The audio file (any format ffmpeg reads) is encoded to AAC and trimmed to the video.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float, audio: str | Path | None = None,
                 *, crf: int = 18):
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.fps, self.audio, self.crf = fps, audio, crf
        self.frames_written = 0
        self._proc: subprocess.Popen | None = None
        self._tmp: Path | None = None
        self._stderr = None

    def _command(self, out: Path) -> list[str]:
        w, h = self.width, self.height
        cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{w}x{h}", "-r", f"{self.fps}", "-i", "-"]
        if self.audio is not None:
            cmd += ["-i", str(self.audio)]
        if w % 2 or h % 2:
            cmd += ["-vf", f"pad={w + w % 2}:{h + h % 2}"]
        cmd += ["-map", "0:v:0"] + (["-map", "1:a:0"] if self.audio is not None else [])
        cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(self.crf)]
        if self.audio is not None:
            cmd += ["-c:a", "aac", "-b:a", "128k", "-shortest"]
        return cmd + [str(out)]

    def __enter__(self) -> Mp4StreamWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        exit_on_signals()  # SIGTERM -> SystemExit, so __exit__ below stops ffmpeg and removes the temp
        remove_stale_temps(self.path)  # a SIGKILLed run's temp (its ffmpeg may even have finished it)
        self._tmp = temp_sibling(self.path)
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(self._command(self._tmp), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=self._stderr)
        return self

    def write(self, frames_rgb: np.ndarray) -> None:
        frames_rgb = np.asarray(frames_rgb)
        if frames_rgb.ndim == 3:
            frames_rgb = frames_rgb[None]
        if frames_rgb.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"frames of shape {frames_rgb.shape[1:]}, writer expects {(self.height, self.width, 3)}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames_rgb, dtype=np.uint8).tobytes())
        except BrokenPipeError:
            self._proc.wait()
            raise InputError(self.path, f"ffmpeg failed ({self._error_line()})") from None
        self.frames_written += len(frames_rgb)

    def _error_line(self) -> str:
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no message"

    def __exit__(self, exc_type, exc, tb) -> None:
        proc, tmp = self._proc, self._tmp
        try:
            if exc_type is not None:
                proc.kill()
                proc.wait()
                return
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
            if proc.wait() != 0:
                raise InputError(self.path, f"ffmpeg failed ({self._error_line()})")
            if self.frames_written == 0:
                raise InputError(self.path, "no frames were written")
            tmp.replace(self.path)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self._stderr.close()
            tmp.unlink(missing_ok=True)
