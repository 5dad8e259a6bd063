"""`generate`: a talking-face mp4 from one photo and one speech file, or (as a stage) the held-out videos.

    emmn generate --image face.jpg --audio speech.wav --out out.mp4 [--emotion happy --intensity 1] [--voice other.wav]
    python -m stages.generate                    # the DVC stage: every held-out clip x row
Photo mode: the face is found and cropped, animated by EmmnNet + the renderer from the audio (any
length, rate, channel count), pasted back into the full photo, and written as H.264 + AAC with the
input audio. The emotion comes from the audio unless --emotion overrides it (--intensity scales it:
0 neutral, 1 the strongest training level, up to 2 extrapolates); --voice (repeatable) gives other recordings
of the same speaker, so the emotion is heard against that voice's own pitch and loudness rather than the
training voices' average (pipeline/audio/prosody.py). Models come from --models-dir:
emmn.pt and emmn_render.pt (fomm.pt when no stage-2 renderer exists).

Stage mode writes data/outputs/frames.zarr (`frames` (F,H,W,3) uint8, clip ids `<row>/<corpus clip>`,
each as long as the corpus clip), data/outputs/<row>/<clip>.mp4, data/reports/generate.json and
data/reports/emotions_sheet.png and emotions_sheet_told.png (one neutral speech clip, each emotion told with
--emotion); see pipeline/render/generate_set.py for the rows.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from pipeline.audio.prosody import DEFAULT_STORE as DEFAULT_PROSODY_STORE
from pipeline.core.config import (
    BaseParams,
    GenerateParams,
    as_dict,
    load_section,
    with_field,
)
from pipeline.core.errors import InputError
from pipeline.core.parallel import dask_client, ordered_map
from pipeline.core.precision import announce_precision, pick_device, resolve_precision
from pipeline.core.store import (
    ArraySpec,
    RaggedStoreWriter,
    atomic_output,
    open_store,
    read_index,
    write_json,
)
from pipeline.core.timings import write_timings
from pipeline.render.generate_set import (
    ClipTask,
    emotions_sheet,
    generate_clip,
    heldout_clips,
    output_clip_id,
    plan_rows,
    told_emotions_sheet,
)
from stages.common import ParamsOption, one_line_errors, stage_app

SCHEMA = "emmn.outputs/v1"
DEFAULT_PARAMS = Path("params.yaml")
app = stage_app()


# ------------------------------------------------------------------------------------------ stage mode


def _run_task(args: tuple) -> dict:
    task, base, p = args
    return generate_clip(task, base, p)


def build_outputs(corpus_dir: Path, audio_store: Path, models_dir: Path, out_dir: Path, report: Path, sheet: Path,
                  base: BaseParams, p: GenerateParams, log=print, told_sheet: Path | None = None,
                  prosody_store: Path = DEFAULT_PROSODY_STORE) -> dict:
    """Every (row, held-out clip) into out_dir (frames.zarr + mp4s, atomically), the sheet and the report; with
    `told_sheet`, also the `--emotion` sheet (pipeline.render.generate_set.told_emotions_sheet)."""
    manifest_path = corpus_dir / "manifest.parquet"
    if not manifest_path.is_file():
        raise InputError(manifest_path, "corpus manifest not found (run the corpus stage first)")
    clips = heldout_clips(pd.read_parquet(manifest_path), p.max_clips, keep_sheet=True, sheet_actor=p.sheet_actor)
    renderer = models_dir / "emmn_render.pt"
    models = {"emmn": models_dir / "emmn.pt", "wav2lip_only": models_dir / "wav2lip.pt",
              **{row: Path(path) for row, path in p.variant_models.items()}}
    rows, skipped = plan_rows(p, models, log)
    if any(r in ("emmn", "baseline", "mmn") for r in rows) and not renderer.is_file():
        raise InputError(renderer, "stage-2 renderer not found (run finetune_render first)")
    audio_index = read_index(audio_store).set_index("clip_id")
    missing = sorted(set(clips.clip_id) - set(audio_index.index))
    if missing:
        raise InputError(audio_store, f"clip '{missing[0]}' has no audio features (re-run audio_features)")
    size = int(open_store(corpus_dir / "frames.zarr")["frames"].shape[1])
    clip_ids = [output_clip_id(row, c) for row in rows for c in clips.clip_id]
    lengths = [int(f) for _ in rows for f in clips.frames]
    attrs = {"schema": SCHEMA, "stage": "generate", "rows": rows, "skipped_rows": skipped,
             "params": {"base": as_dict(base), "generate": as_dict(p)},
             "frames": "RGB uint8 at the corpus frame size; clip id <row>/<corpus clip id>, as long as that clip"}
    precision = resolve_precision(base.precision, pick_device(base.device))
    announce_precision(precision, "generate", log)
    attrs["precision"] = precision.resolved
    t0 = time.monotonic()
    seconds = {row: 0.0 for row in rows}
    with atomic_output(out_dir) as tmp:
        writer = RaggedStoreWriter(tmp / "frames.zarr", clip_ids, lengths,
                                   {"frames": ArraySpec((size, size, 3), "uint8", ("y", "x", "channel"))},
                                   attrs=attrs, chunk_frames=p.chunk_frames, shard_frames=p.shard_frames)
        with dask_client(base.workers, base.scheduler_address) as client:
            tasks = []
            for row in rows:
                for c in clips.itertuples():
                    a = audio_index.loc[c.clip_id]
                    model = models.get(row)
                    tasks.append((ClipTask(
                        row, c.clip_id, c.actor, int(c.start), int(c.stop), int(a.start), int(a.stop),
                        str(corpus_dir / c.wav_path), str(corpus_dir), str(audio_store), str(prosody_store),
                        None if model is None else str(model),
                        str(renderer) if row in ("emmn", "baseline", "mmn") else None,
                        str(tmp / row / f"{c.clip_id}.mp4"), base.device, client is not None), base, p))
            for i, result in enumerate(ordered_map(_run_task, tasks, client=client,
                                                   window=2 * max(base.workers, 1), description="generate")):
                writer.write_clip(i, {"frames": result["frames"]})
                seconds[tasks[i][0].row] += result["seconds"]
        writer.close()
        sheet_info = emotions_sheet(tmp / "frames.zarr", corpus_dir, clips, sheet, actor=p.sheet_actor,
                                    columns=p.sheet_frames)
    told_info = None
    if told_sheet is not None:
        from pipeline.render.generate import load_animator

        animator = load_animator(models["emmn"], renderer, pick_device(base.device))
        told_info = told_emotions_sheet(animator, corpus_dir, clips, told_sheet, base, p, actor=p.sheet_actor)
    frames = int(clips.frames.sum())
    summary = {
        "rows": rows, "skipped_rows": skipped, "clips": len(clips), "frames_per_row": frames,
        "actors": sorted(clips.actor.unique()), "renderer": str(renderer), "precision": precision.resolved,
        "filter": p.filter, "sheet": sheet_info, "told_sheet": told_info,
    }
    timings = {"seconds": round(time.monotonic() - t0, 1),
               "ms_per_frame": {row: round(1000 * s / max(frames, 1), 2) for row, s in seconds.items()}}
    write_json(report, summary)
    write_timings(report, timings)
    log(f"generate: {len(rows)} rows x {len(clips)} clips ({frames} frames each) -> {out_dir} "
        f"in {timings['seconds']}s; ms/frame {timings['ms_per_frame']}")
    return summary


# ------------------------------------------------------------------------------------------ photo mode


def generate_from_photo(image: Path, audio: Path, out: Path, models_dir: Path, base: BaseParams, p: GenerateParams,
                        emotion: str | None, intensity: float | None, device: str, voice: Sequence[Path] = ()
                        ) -> dict:
    """`emmn generate --image --audio --out`: one mp4, with a progress bar (plain lines off a terminal)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from pipeline.render.generate import (
        EMMN_FILE,
        PASTE_FRAMES,
        check_output_path,
        generate_video,
        load_animator,
        renderer_path,
    )

    check_output_path(out)  # the cheap checks first, before any model is loaded or frame rendered
    if not Path(image).is_file():
        raise InputError(image, "image file not found")
    if not Path(audio).is_file():
        raise InputError(audio, "audio file not found")
    for path in voice:
        if not Path(path).is_file():
            raise InputError(path, "voice recording not found")
    animator = load_animator(models_dir / EMMN_FILE, renderer_path(models_dir), pick_device(device))
    interactive = sys.stderr.isatty()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not interactive) as bar:
        task = bar.add_task("generate: frames", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            if not interactive and (done == total or done % 250 < PASTE_FRAMES):  # a log line every ~10 s of video
                print(f"generate: {done}/{total} frames", file=sys.stderr, flush=True)

        # stdout carries the JSON summary: the log (the resolved precision) goes to stderr
        return generate_video(image, audio, out, animator, base, p, emotion=emotion, intensity=intensity,
                              voice=voice, progress=progress, log=lambda line: print(line, file=sys.stderr, flush=True))


@app.command()
@one_line_errors
def generate(
    image: Annotated[Path | None, typer.Option(help="photo with a face (photo mode)")] = None,
    audio: Annotated[Path | None, typer.Option(help="speech: any format, rate, channels (photo mode)")] = None,
    out: Annotated[Path | None, typer.Option(help="photo mode: the mp4 to write; stage mode: the outputs folder")]
    = None,
    emotion: Annotated[str | None, typer.Option(help="override the emotion heard in the audio (e.g. happy)")]
    = None,
    intensity: Annotated[float | None, typer.Option(help="strength of --emotion: 0 neutral, 1 strongest trained "
                                                         "level, up to 2")] = None,
    voice: Annotated[list[Path] | None, typer.Option(
        help="other recordings of the same speaker (repeatable; the --audio file itself also works when it is long): "
             "the emotion is heard relative to this voice instead of the training voices' average")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda (default: base.device)")] = None,
    precision: Annotated[str | None, typer.Option(
        help="auto | fp32 | bf16 (default: base.precision; auto = bf16 only where the hardware has it)")] = None,
    models_dir: Annotated[Path, typer.Option(help="emmn.pt, emmn_render.pt (or fomm.pt), wav2lip.pt")]
    = Path("data/models"),
    params: ParamsOption = DEFAULT_PARAMS,
    corpus: Annotated[Path, typer.Option(help="stage mode: corpus folder")] = Path("data/corpus"),
    audio_features: Annotated[Path, typer.Option(help="stage mode: audio.zarr")] = Path("data/features/audio.zarr"),
    prosody: Annotated[Path, typer.Option(help="stage mode: prosody.zarr (each actor's voice baseline)")] = (
        DEFAULT_PROSODY_STORE),
    report: Annotated[Path, typer.Option(help="stage mode: report JSON")] = Path("data/reports/generate.json"),
    sheet: Annotated[Path, typer.Option(help="stage mode: emotions contact sheet")] = Path(
        "data/reports/emotions_sheet.png"),
    told_sheet: Annotated[Path, typer.Option(help="stage mode: the same sheet with --emotion told, one neutral "
                                                  "speech clip")] = Path("data/reports/emotions_sheet_told.png"),
) -> None:
    """Talking-face video from --image + --audio into --out; without them, the held-out videos (DVC stage)."""
    if image is not None and params == DEFAULT_PARAMS and not params.is_file():
        base, p = BaseParams(), GenerateParams()  # photo mode outside the repository: the built-in defaults
    else:
        base, p = load_section("base", params), load_section("generate", params)
    if precision is not None:
        resolve_precision(precision, "cpu", where="--precision")  # refuses an unknown value in one line
        base = with_field(base, precision=precision)
    if image is not None or audio is not None:
        if image is None or audio is None or out is None:
            raise InputError(None, "photo mode needs --image, --audio and --out")
        summary = generate_from_photo(image, audio, out, models_dir, base, p, emotion, intensity,
                                      device or base.device, voice or ())
        typer.echo(json.dumps(summary))
        return
    if emotion is not None or intensity is not None or voice:
        raise InputError(None, "--emotion/--intensity/--voice apply to photo mode (--image, --audio, --out)")
    if device is not None:
        base = BaseParams(**{**as_dict(base), "device": device})
    summary = build_outputs(corpus, audio_features, models_dir, out or Path("data/outputs"), report, sheet, base, p,
                            told_sheet=told_sheet, prosody_store=prosody)
    typer.echo(json.dumps({k: summary[k] for k in ("rows", "skipped_rows", "clips", "precision")}))


if __name__ == "__main__":
    app()
