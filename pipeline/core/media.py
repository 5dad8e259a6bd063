"""Video and audio files: OpenCV for reading frames, soundfile for wav, bundled ffmpeg for mp4 + sound."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

from pipeline.core.errors import InputError
from pipeline.core.store import atomic_output


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@contextlib.contextmanager
def opened_video(path: Path) -> Iterator[cv2.VideoCapture]:
    """An OpenCV capture of `path`, released on exit; InputError when the file is missing or cannot be opened."""
    if not path.is_file():
        raise InputError(path, "video file not found")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InputError(path, "unreadable video (OpenCV cannot open it)")
        yield cap
    finally:
        cap.release()


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """All frames as RGB uint8 (T, H, W, 3) and the container's fps."""
    path = Path(path)
    with opened_video(path) as cap:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    if not frames:
        raise InputError(path, "unreadable video (no frames could be decoded)")
    if not fps > 0:
        raise InputError(path, "video has no frame rate")
    return np.stack(frames), fps


@dataclass(frozen=True)
class VideoInfo:
    """What a video's container header says (the frame count may be off by one, or a lie if the file was cut)."""

    width: int
    height: int
    fps: float
    frames: int


def video_info(path: str | Path) -> VideoInfo:
    """The header's size, frame rate and frame count; InputError when the file cannot be opened as a video."""
    path = Path(path)
    with opened_video(path) as cap:
        info = VideoInfo(int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                         float(cap.get(cv2.CAP_PROP_FPS) or 0.0), int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
    if info.width <= 0 or info.height <= 0 or info.frames <= 0:
        raise InputError(path, "unreadable video (no frame size or frame count in its header)")
    if not info.fps > 0:
        raise InputError(path, "video has no frame rate")
    return info


def iter_video_frames(path: str | Path, info: VideoInfo) -> Iterator[np.ndarray]:
    """RGB uint8 frames (H, W, 3) one at a time from an ffmpeg pipe: memory does not grow with the clip.

    Every frame the file holds comes out once (no frame-rate conversion). A stream that ffmpeg decodes with
    errors (cut off, damaged) or that ends well before its header's frame count raises InputError after the
    last good frame, so a caller that consumes all frames has checked the file.
    """
    path = Path(path)
    frame_bytes = info.width * info.height * 3
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-noautorotate", "-i", str(path), "-map", "0:v:0",
           "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
                                bufsize=frame_bytes)
        count = 0
        try:
            while True:
                data = proc.stdout.read(frame_bytes)
                if len(data) < frame_bytes:
                    break
                count += 1
                yield np.frombuffer(data, np.uint8).reshape(info.height, info.width, 3)
            code = proc.wait()
        finally:
            if proc.poll() is None:  # the caller stopped early
                proc.kill()
                proc.wait()
            proc.stdout.close()
        errors.seek(0)
        lines = errors.read().decode(errors="replace").strip().splitlines()
    if code != 0 or lines or len(data):
        detail = lines[0].split("] ")[-1] if lines else f"exit code {code}" if code else "a partial last frame"
        raise InputError(path, f"video stream is truncated or damaged after {count} frames (ffmpeg: {detail})")
    if count == 0:
        raise InputError(path, "unreadable video (no frames could be decoded)")
    if count < info.frames - 2:  # headers are often off by one; a cut file loses many
        raise InputError(path, f"truncated video: {count} of the {info.frames} frames its header lists could be "
                               "decoded")


def resample_frame_indices(n_frames: int, src_fps: float, dst_fps: float) -> np.ndarray:
    """Nearest source frame for each output frame, so a 30 fps clip becomes 25 fps of equal duration."""
    duration = n_frames / src_fps
    n_out = max(1, int(round(duration * dst_fps)))
    times = (np.arange(n_out) + 0.5) / dst_fps
    return np.clip(np.floor(times * src_fps).astype(np.int64), 0, n_frames - 1)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM wav (what MEAD-style tools and syncnet_python's scipy reader expect)."""
    with atomic_output(path) as tmp:  # the temp keeps the .wav suffix soundfile reads the format from
        sf.write(str(tmp), np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16")


def write_mp4(path: str | Path, frames_rgb: np.ndarray, fps: float, audio: str | Path | None = None,
              *, crf: int = 18) -> None:
    """H.264 (yuv420p) + AAC mp4 through the ffmpeg that imageio-ffmpeg bundles; frames piped raw.

    The audio is trimmed to the video (`-shortest`); the file appears only when ffmpeg succeeded.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames_rgb = np.ascontiguousarray(frames_rgb, dtype=np.uint8)
    t, h, w, _ = frames_rgb.shape
    pad_h, pad_w = h % 2, w % 2  # yuv420p needs even sides
    cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", f"{fps}", "-i", "-"]
    if audio is not None:
        cmd += ["-i", str(audio)]
    vf = [f"pad={w + pad_w}:{h + pad_h}"] if (pad_h or pad_w) else []
    cmd += (["-vf", ",".join(vf)] if vf else []) + ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(crf)]
    if audio is not None:
        cmd += ["-c:a", "aac", "-b:a", "128k", "-shortest"]
    with atomic_output(path) as tmp:  # subprocess.run kills ffmpeg if SIGTERM/SIGINT interrupts the wait
        proc = subprocess.run(cmd + [str(tmp)], input=frames_rgb.tobytes(), capture_output=True)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise InputError(path, f"ffmpeg failed ({err[-1] if err else 'no message'})")


def has_audio_stream(path: str | Path) -> bool:
    """Whether a media file holds an audio stream (ffmpeg's banner, since no ffprobe is bundled)."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True)
    return "Audio:" in proc.stderr.decode(errors="replace")


FACE_SIZE = 96  # the generator and the expert have fixed spatial layouts for 96x96 faces


def faces_bgr(frames_rgb: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """uint8 RGB frames [T,H,W,3] -> uint8 BGR [T,size,size,3] (area filter down, bilinear up)."""
    frames_rgb = np.asarray(frames_rgb)
    if frames_rgb.dtype != np.uint8 or frames_rgb.ndim != 4 or frames_rgb.shape[-1] != 3:
        raise InputError(None, f"frames must be uint8 [T,H,W,3], got {frames_rgb.dtype} {frames_rgb.shape}")
    if frames_rgb.shape[1:3] == (size, size):
        return np.ascontiguousarray(frames_rgb[..., ::-1])
    interp = cv2.INTER_AREA if frames_rgb.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (size, size), interpolation=interp)[..., ::-1] for f in frames_rgb])


SAMPLE_RATE = 16000


# Formats libsndfile decodes itself; anything else (m4a, mp4, ...) goes through ffmpeg.
_SOUNDFILE_SUFFIXES = {".wav", ".wave", ".flac", ".ogg", ".oga", ".aif", ".aiff"}


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as float32 mono in [-1, 1] at `sample_rate`.

    Channels are averaged and other rates resampled (soxr, as `librosa.load` does). Files that
    libsndfile cannot read (m4a, mp4 with an audio track, ...) are decoded by the ffmpeg binary that
    imageio-ffmpeg bundles. A missing, empty or undecodable file raises `InputError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "audio file not found")
    if path.stat().st_size == 0:
        raise InputError(path, "audio file is empty (0 bytes)")
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        check_wav_complete(path)
        samples, native_rate = _read_with_soundfile(path)
    else:
        samples, native_rate = _decode_with_ffmpeg(path, sample_rate), sample_rate
    if samples.size == 0:
        raise InputError(path, "audio file holds no samples")
    if not np.all(np.isfinite(samples)):
        raise InputError(path, "audio file holds non-finite samples")
    if native_rate != sample_rate:
        import librosa  # imported here: it is slow to import and only resampling needs it

        samples = librosa.resample(samples, orig_sr=native_rate, target_sr=sample_rate)
    return np.ascontiguousarray(samples, dtype=np.float32)


def check_wav_complete(path: Path) -> None:
    """Refuse a WAV cut off after its header: libsndfile silently reads what is there, so a file whose
    data chunk claims 3.5 s but holds 1 s would make a 1-s video without a word. Other formats pass."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        rate = block = 0
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            kind, length = chunk[:4], int.from_bytes(chunk[4:], "little")
            if kind == b"fmt ":
                fmt = f.read(length)
                rate, block = int.from_bytes(fmt[4:8], "little"), int.from_bytes(fmt[12:14], "little")
                f.seek(length % 2, 1)
            elif kind == b"data":
                held = size - f.tell()
                # streaming writers leave the size 0 or 0xFFFFFFFF ("until the end"): nothing to compare
                if length in (0, 0xFFFFFFFF) or not rate or not block or length <= held:
                    return
                raise InputError(path, f"truncated WAV: its header says {length / block / rate:.2f} s of audio, "
                                       f"the file holds {held // block / rate:.2f} s")
            else:
                f.seek(length + length % 2, 1)


def _read_with_soundfile(path: Path) -> tuple[np.ndarray, int]:
    """Decode with libsndfile; integer PCM is scaled by 1/32768 (int16) like librosa."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # libsndfile says "Error opening '<path>': <reason>"; the path is already in the error.
        raise InputError(path, f"not a readable audio file ({first.split(': ')[-1]})") from None
    return data.mean(axis=1, dtype=np.float32), int(rate)


def _decode_with_ffmpeg(path: Path, sample_rate: int) -> np.ndarray:
    """Decode any container ffmpeg knows to s16le mono at `sample_rate`; return float32 in [-1, 1]."""
    import imageio_ffmpeg

    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path),
        "-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "s16le", "-acodec", "pcm_s16le", "-",
    ]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        raise InputError(path, f"ffmpeg cannot decode its audio ({lines[-1] if lines else 'no message'})")
    if result.stderr.strip():  # decoded, but with errors: a cut-off or damaged stream ("partial file")
        first = result.stderr.decode(errors="replace").strip().splitlines()[0].split("] ")[-1]
        raise InputError(path, f"audio stream is truncated or damaged (ffmpeg: {first})")
    # An odd trailing byte can only come from a cut-off stream; drop it.
    raw = result.stdout[: len(result.stdout) // 2 * 2]
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
