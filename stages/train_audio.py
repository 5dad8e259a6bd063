"""`train_audio` stage: EVP's emotion/content disentanglement of speech (EMMN 3.3), trained on the corpus.

    python -m stages.train_audio                 # what dvc repro runs
    emmn train_audio --params params.yaml
Writes data/models/audio.pt (AudioEncoders: E_c, E_e, decoder, classifier; `load_audio_encoders`), the
held-out report data/reports/audio.json (emotion_acc_from_ee, emotion_acc_from_ec, reconstruction errors,
per-emotion accuracy), its confusion matrix data/reports/audio_confusion.png, the loss log
data/reports/audio_losses.csv (DVC plot, x = step). `train_audio.pretrained: <EVP
<epoch>_pretrain.pth>` imports EVP's released weights instead of training (then only evaluated).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from pipeline.audio.data import AudioBank
from pipeline.audio.report import evaluate_audio, plot_confusion
from pipeline.audio.train import checkpoint_config, import_pretrained, train_audio_model
from pipeline.core.config import BaseParams, TrainAudioParams, load_section
from pipeline.core.errors import InputError
from pipeline.core.store import write_json
from pipeline.core.timings import read_timings, write_timings
from pipeline.corpus.manifest import read_manifest
from pipeline.lipsync.data import real_clips
from pipeline.models.audio import ARCH
from pipeline.training.loop import save_training_state, torch_threads
from stages.common import ParamsOption, one_line_errors, stage_app

app = stage_app()


def run_train_audio(corpus_dir: Path, audio_store: Path, model_out: Path, report: Path, losses_csv: Path,
                    confusion_png: Path, base: BaseParams, p: TrainAudioParams, log=print,
                    prosody_store: Path = Path("data/features/prosody.zarr")) -> dict:
    """Align, train (or import), evaluate on the held-out actors; write checkpoint, report and pictures."""
    if p.voice_baseline not in ("speaker", "default"):
        raise InputError("params.yaml", f"train_audio.voice_baseline must be speaker or default, not "
                                        f"{p.voice_baseline!r}")
    with torch_threads(p.threads):
        manifest = read_manifest(corpus_dir)
        train_clips, test_clips = real_clips(manifest, "train", 2), real_clips(manifest, "test", 2)
        if test_clips.empty:
            raise InputError(Path(corpus_dir) / "manifest.parquet",
                             "no held-out (test split) real clips to evaluate on")
        t0 = time.monotonic()
        with_mel = p.emotion_input == "mel" and not p.pretrained
        voices = prosody_store if p.prosody_channels and not p.pretrained else None
        train_bank = AudioBank.load(audio_store, train_clips, with_mel=with_mel, prosody_store=voices)
        test_bank = AudioBank.load(audio_store, test_clips, with_mel=with_mel, prosody_store=voices)
        if voices is not None and p.voice_baseline == "default":  # ablation: everyone gets the training average
            for bank in (train_bank, test_bank):
                bank.voices[:] = np.unique(train_bank.voices, axis=0).mean(axis=0)
        dtw_seconds = time.monotonic() - t0
        log(f"train_audio: {len(train_bank.warps) + len(test_bank.warps)} DTW alignments in {dtw_seconds:.1f}s")
        # alphabetical: on MEAD's eight emotions this is EVP's class order
        emotions = tuple(sorted({str(e) for e in train_bank.emotions}))
        optimizers = None
        if p.pretrained:
            model, train_metrics = import_pretrained(p.pretrained, set(train_bank.emotions) | set(test_bank.emotions),
                                                     losses_csv)
            step = 0
        else:
            model, step, train_metrics, optimizers = train_audio_model(train_bank, emotions, model_out, losses_csv,
                                                                       base, p, log=log)
        heldout, confusion = evaluate_audio(model, train_bank, test_bank, seed=base.seed,
                                            eval_quads_count=p.eval_quads, probe_alphas=p.probe_alphas)
    metrics = {**heldout, **train_metrics,
               "dtw_mean_path_cost": round(float(sum(train_bank.dtw_costs) / max(len(train_bank.dtw_costs), 1)), 3)}
    save_training_state(model_out, modules={ARCH: model}, config=checkpoint_config(model.config, base), step=step,
                        metrics=metrics, optimizers=optimizers)  # optimizer state kept so `resume` can continue
    write_timings(model_out, {**read_timings(model_out), "dtw_seconds": round(dtw_seconds, 1)})
    plot_confusion(confusion, model.emotions, confusion_png,
                   f"held-out emotion from e_e: acc {metrics['emotion_acc_from_ee']:.3f} "
                   f"(chance {metrics['chance']:.3f})")
    write_json(report, metrics)
    log(f"train_audio: held-out emotion accuracy from e_e {metrics['emotion_acc_from_ee']:.3f} (probe "
        f"{metrics['emotion_acc_from_ee_probe']:.3f}), from e_c {metrics['emotion_acc_from_ec']:.3f}, chance "
        f"{metrics['chance']:.3f}; cross-reconstruction {metrics['cross_rec_err']:.2f} (copy "
        f"{metrics['copy_baseline_err']:.2f})")
    return metrics


@app.command()
@one_line_errors
def train_audio(
    params: ParamsOption = Path("params.yaml"),
    corpus: Annotated[Path, typer.Option(help="corpus folder")] = Path("data/corpus"),
    audio: Annotated[Path, typer.Option(help="audio feature store (MFCC windows)")] = Path("data/features/audio.zarr"),
    prosody: Annotated[Path, typer.Option(help="prosody store (pitch, loudness, voice baselines)")] = Path(
        "data/features/prosody.zarr"),
    out: Annotated[Path, typer.Option(help="checkpoint to write")] = Path("data/models/audio.pt"),
    report: Annotated[Path, typer.Option(help="held-out metrics JSON")] = Path("data/reports/audio.json"),
    losses: Annotated[Path, typer.Option(help="loss log CSV (DVC plot)")] = Path("data/reports/audio_losses.csv"),
    confusion_png: Annotated[Path, typer.Option(help="held-out confusion matrix PNG")] = Path(
        "data/reports/audio_confusion.png"),
) -> None:
    """Train the audio content/emotion encoders (EVP disentanglement) or import EVP's weights; held-out report."""
    base, p = load_section("base", params), load_section("train_audio", params)
    metrics = run_train_audio(corpus, audio, out, report, losses, confusion_png, base, p,
                              prosody_store=prosody)
    typer.echo(json.dumps({k: metrics[k] for k in ("emotion_acc_from_ee", "emotion_acc_from_ec", "cross_rec_err")}))


if __name__ == "__main__":
    app()
