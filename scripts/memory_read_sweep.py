"""Score a trained emmn.pt on the held-out clips at several inference temperatures of Eq. 10, outside DVC.

    .venv/bin/python scripts/memory_read_sweep.py                                  # data/models/emmn.pt
    .venv/bin/python scripts/memory_read_sweep.py -t 0.1 -t 0.05 -t 0.02 --model other.pt --out sweep.json
Each row is memory.json's held-out block at that tau (`train_memory.read_temperature`): retrieval error, emotion
accuracy of the read-out (from the audio's e_e and from the told emotion), expression strength, address
perplexity. ~20 s a temperature on one core.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer

from pipeline.core.config import load_section
from pipeline.memory.train import (
    MemoryTrainer,
    load_memory_data,
    read_temperature_sweep,
    training_means,
)
from pipeline.models.emmn import load_emmn
from stages.common import ParamsOption, one_line_errors

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
COLUMNS = ("read_temperature", "retrieval_err", "keypoint_l1", "emotion_acc_retrieved",
           "emotion_acc_retrieved_told_emotion", "expression_strength", "address_perplexity")


@app.command()
@one_line_errors
def main(
    params: ParamsOption = Path("params.yaml"),
    model: Annotated[Path, typer.Option(help="EmmnNet checkpoint (train_memory)")] = Path("data/models/emmn.pt"),
    temperature: Annotated[list[float], typer.Option("-t", "--temperature", min=1e-4,
                                                     help="inference tau of Eq. 10 (repeat)")] = (0.1, 0.05, 0.025),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    keypoints: Annotated[Path, typer.Option(help="keypoints.zarr")] = Path("data/features/keypoints.zarr"),
    motion_store: Annotated[Path, typer.Option(help="motion.zarr")] = Path("data/features/motion.zarr"),
    audio_store: Annotated[Path, typer.Option(help="audio.zarr")] = Path("data/features/audio.zarr"),
    prosody_store: Annotated[Path, typer.Option(help="prosody.zarr")] = Path("data/features/prosody.zarr"),
    out: Annotated[Path, typer.Option(help="JSON rows")] = Path("memory_read_sweep.json"),
    threads: Annotated[int, typer.Option(min=1, help="torch threads")] = 1,
) -> None:
    """memory.json's held-out numbers at each read temperature."""
    torch.set_num_threads(threads)
    net = load_emmn(model)
    data = load_memory_data(corpus, keypoints, motion_store if net.config.variant == "emmn" else None, audio_store,
                            mel=net.needs_mel, prosody=prosody_store if net.needs_prosody else None)
    trainer = MemoryTrainer(net, data, load_section("train_memory", params), torch.device("cpu"))
    rows = read_temperature_sweep(trainer, data.split("test"), training_means(trainer), list(temperature))
    out.write_text(json.dumps(rows, indent=2) + "\n")
    typer.echo(" | ".join(COLUMNS))
    for row in rows:
        typer.echo(" | ".join(f"{row.get(k, float('nan')):.3f}" for k in COLUMNS))


if __name__ == "__main__":
    app()
