"""`prosody` stage: pitch and loudness per video frame, and each speaker's voice baseline (pipeline.audio.prosody).

    python -m stages.prosody
Writes data/features/prosody.zarr: `prosody` (F, 4, 3) = four sub-steps per video frame of (f0 semitones or 0
where unvoiced, voiced, energy dB FS), aligned row for row with the corpus frames (same per-clip index as
audio.zarr), and the root attribute `voices`: {actor: [median voiced f0, mean voiced energy]} over that actor's
real clips (counterfactual clips reuse the same actor's speech). The emotion encoder hears prosody relative
to the speaker's baseline (train_audio.prosody_channels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.audio.prosody_features import build_prosody
from pipeline.core.config import load_section
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


@app.command()
@one_line_errors
def prosody(
    params: ParamsOption = Path("params.yaml"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    out: Annotated[Path, typer.Option(help="output store")] = Path("data/features/prosody.zarr"),
) -> None:
    """Pitch/loudness tracks per video frame and per-speaker voice baselines into data/features/prosody.zarr."""
    base, p = load_section("base", params), load_section("prosody", params)
    voices = build_prosody(corpus, out, base, p)
    typer.echo(f"prosody: {len(voices)} voices -> {out}; " + ", ".join(
        f"{a} {v[0]:.1f} st / {v[1]:.1f} dB" for a, v in voices.items()))


if __name__ == "__main__":
    app()
