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
from pathlib import Path
from typing import Annotated

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
from pipeline.core.precision import resolve_precision
from pipeline.render.generate import generate_from_photo
from pipeline.render.generate_set import build_outputs
from stages.common import ParamsOption, one_line_errors, stage_app

DEFAULT_PARAMS = Path("params.yaml")
app = stage_app()


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
