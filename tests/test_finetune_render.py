"""Stage 2 (Eq. 15): the loss on hand-computed cases and the finetune_render stage on the tiny corpus."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from pipeline.fomm.io import load_fomm
from pipeline.models.vgg19 import Vgg19Features
from pipeline.render.finetune import RenderLoss, stage2_loss
from pipeline.training.loop import read_loss_csv
from tests.conftest import tiny_section
from tests.generate_fixtures import write_tiny_emmn, write_tiny_fomm
from tests.lipsync_fixtures import tiny_audio  # noqa: F401
from tests.resume_helpers import Killed, kill_at, same_weights


def test_stage2_loss_eq15_by_hand():
    """Two 'layers': mean |diff| of [[1,2],[3,4]] vs [[0,2],[3,6]] = (1+0+0+2)/4 = 0.75, of [1,1] vs [0,0] = 1."""
    real = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([1.0, 1.0])]
    fake = [torch.tensor([[0.0, 2.0], [3.0, 6.0]], requires_grad=True), torch.tensor([0.0, 0.0], requires_grad=True)]
    loss = stage2_loss(real, fake)
    assert loss.item() == pytest.approx(1.75)
    loss.backward()  # gradient of mean |fake - real|: sign(fake - real) / count, only on the fake side
    assert torch.equal(fake[0].grad, torch.tensor([[-0.25, 0.0], [0.0, 0.25]]))
    with pytest.raises(ValueError):
        stage2_loss(real, fake[:1])


def test_render_loss_without_vgg_is_eq15_on_pixels_summed_over_the_pyramid():
    target = torch.zeros(1, 3, 16, 16)
    prediction = torch.full((1, 3, 16, 16), 0.25)
    loss = RenderLoss((1.0,))
    assert loss.kind == "multiscale_l1" and loss(prediction, target).item() == pytest.approx(0.25)
    # a constant image stays constant at every scale (away from the blur's zero padding only the border differs)
    two = RenderLoss((1.0, 0.5))(prediction, target).item()
    assert 0.25 < two <= 0.5


def test_render_loss_with_vgg_sums_eq15_over_the_five_feature_maps():
    torch.manual_seed(0)
    vgg = Vgg19Features().eval()
    loss = RenderLoss((1.0,), vgg)
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = stage2_loss(vgg(b), vgg(a))
        assert loss.kind == "perceptual_vgg19"
        assert loss(a, b).item() == pytest.approx(expected.item(), rel=1e-5)
        assert RenderLoss((0.25,), vgg)(a, b).item() == 0.0  # 8 px: under relu5_1's 16 px, skipped as FOMM does


def test_finetune_render_stage_on_the_tiny_corpus(tiny_audio, tmp_path):
    from stages.finetune_render import run_finetune_render

    corpus, audio = tiny_audio
    write_tiny_fomm(tmp_path / "fomm.pt")
    write_tiny_emmn(tmp_path / "emmn.pt", num_kp=tiny_section("train_fomm").num_kp)
    out = tmp_path / "emmn_render.pt"
    metrics = run_finetune_render(corpus, audio, tmp_path / "emmn.pt", tmp_path / "fomm.pt", out,
                                  tmp_path / "losses.csv", tmp_path / "report.json",
                                  tiny_section("base"), tiny_section("finetune_render"))
    assert metrics["loss"] == "multiscale_l1" and metrics["steps"] == 3
    report = json.loads((tmp_path / "report.json").read_text())
    for key in ("heldout_psnr_before", "heldout_psnr_after", "heldout_l1_before", "heldout_l1_after", "loss"):
        assert key in report
    assert [r["step"] for r in read_loss_csv(tmp_path / "losses.csv")] == [1, 2, 3]
    tuned, start = load_fomm(out), load_fomm(tmp_path / "fomm.pt")  # loads as a renderer (fomm.pt layout)
    for name, param in start.kp_detector.state_dict().items():
        assert torch.equal(param, tuned.kp_detector.state_dict()[name])  # E_k unchanged
    tuned_state = tuned.generator.state_dict()
    changed = [n for n, p in start.generator.state_dict().items() if not torch.equal(p, tuned_state[n])]
    assert any(n.startswith("dense_motion_network.") for n in changed)  # train_dense_motion: true
    assert all(n.startswith("dense_motion_network.") for n in changed)  # train_generator: false (weights, BN stats)
    assert report["heldout_sharpness_before"] > 0 and report["heldout_sharpness_after"] > 0

    both = dataclasses.replace(tiny_section("finetune_render"), train_generator=True)
    run_finetune_render(corpus, audio, tmp_path / "emmn.pt", tmp_path / "fomm.pt", out, tmp_path / "losses.csv",
                        tmp_path / "report.json", tiny_section("base"), both)
    tuned_state = load_fomm(out).generator.state_dict()
    changed = [n for n, p in start.generator.state_dict().items() if not torch.equal(p, tuned_state[n])]
    assert any(n.startswith("final.") for n in changed)


def test_sharpness_is_the_mean_absolute_laplacian():
    from pipeline.render.finetune import sharpness

    image = torch.zeros(1, 1, 3, 3)
    image[0, 0, 1, 1] = 1.0  # one bright pixel: Laplacian 4 at the only interior pixel
    assert torch.allclose(sharpness(image), torch.tensor([4.0]))
    ramp = torch.arange(16.0).view(1, 1, 4, 4)  # linear: no curvature anywhere
    assert torch.allclose(sharpness(ramp), torch.tensor([0.0]))
    blurred = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 16, 16), 3, 1, 1)
    assert (sharpness(blurred) < sharpness(torch.rand(2, 3, 16, 16))).all()


def test_frames_can_be_driven_by_their_own_detected_keypoints(tiny_audio, tmp_path):  # noqa: F811
    import numpy as np
    import pandas as pd

    from pipeline.core.errors import InputError
    from pipeline.core.store import ArraySpec, RaggedStoreWriter
    from pipeline.render.finetune import (
        FrameSampler,
        PredictedClips,
        References,
        detected_keypoints,
    )

    corpus, _ = tiny_audio
    manifest = pd.read_parquet(corpus / "manifest.parquet")
    rows = manifest[manifest.kind == "real"].iloc[:2]
    n = 3
    clips = PredictedClips(list(rows.clip_id), list(rows.actor), rows.start.to_numpy(), rows.frames.to_numpy(),
                           [np.zeros((f, n, 2), np.float32) for f in rows.frames],
                           [np.zeros((f, n, 2, 2), np.float32) for f in rows.frames])
    total = int(manifest.stop.max())
    detected = (np.arange(total, dtype=np.float32)[:, None, None] + np.zeros((1, n, 2), np.float32),
                np.ones((total, n, 2, 2), np.float32))  # value = the corpus row: shows which frame drove
    refs = References({a: torch.zeros(1, 3, 8, 8) for a in rows.actor},
                      {a: {"value": np.zeros((1, n, 2), np.float32), "jacobian": np.zeros((1, n, 2, 2), np.float32)}
                       for a in rows.actor})
    sampler = FrameSampler(corpus, clips, refs, 8, detected)
    batch = sampler.batch([(0, 4), (1, 2)], [True, False])
    assert batch["kp_driving_value"][0, 0, 0] == int(rows.start.iloc[0]) + 4  # E_k's keypoints of that frame
    assert batch["kp_driving_value"][1].abs().sum() == 0 and batch["kp_driving_jacobian"][1].abs().sum() == 0
    plain = sampler.sample(np.random.default_rng(5), 6)
    mixed = sampler.sample(np.random.default_rng(5), 6, detected_share=1.0)
    assert torch.equal(plain["target"], mixed["target"])  # the share is drawn last: the same frames
    assert plain["kp_driving_value"].abs().sum() == 0 and (mixed["kp_driving_value"] > 0).all()
    assert (mixed["kp_driving_jacobian"] == 1).all()

    store = tmp_path / "keypoints.zarr"
    writer = RaggedStoreWriter(store, list(rows.clip_id)[::-1], list(rows.frames)[::-1],
                               {"value": ArraySpec((n, 2), "float32", ("kp", "xy"))}, attrs={}, chunk_frames=8,
                               shard_frames=64)
    for i, f in enumerate(list(rows.frames)[::-1]):
        writer.write_clip(i, {"value": np.zeros((f, n, 2), np.float32)})
    writer.close()
    with pytest.raises(InputError, match="is not at its corpus rows"):  # clips in another order than the corpus
        detected_keypoints(store, clips)


def _tiny_fomm_with_discriminator(path, seed: int = 0):
    """write_tiny_fomm's file plus a discriminator under train_state, as train_fomm's GAN leaves one."""
    from pipeline.fomm.train import fomm_config, init_fomm
    from pipeline.models.fomm import MultiScaleDiscriminator
    from pipeline.training.loop import save_training_state

    config = fomm_config(tiny_section("train_fomm"))
    kp_detector, generator = init_fomm(config, seed)
    torch.manual_seed(seed + 1)
    discriminator = MultiScaleDiscriminator(config)
    save_training_state(path, modules={"kp_detector": kp_detector, "generator": generator}, config=config.to_dict(),
                        step=0, metrics={}, extra_modules={"discriminator": discriminator})
    return config, discriminator


def test_the_adversary_starts_from_fomm_pt_s_discriminator_or_fresh(tmp_path):
    from pipeline.core.checkpoints import load_training_state
    from pipeline.core.config import FinetuneRenderParams
    from pipeline.core.errors import CheckpointError
    from pipeline.fomm.train import fomm_config
    from pipeline.render.finetune import stage2_adversary

    cpu = torch.device("cpu")
    p = FinetuneRenderParams(gan_weight=0.1, feature_matching_weight=1.0)
    config, trained = _tiny_fomm_with_discriminator(tmp_path / "gan.pt")
    adversary, origin = stage2_adversary(load_training_state(tmp_path / "gan.pt"), tmp_path / "gan.pt", config, p, cpu)
    assert origin == "fomm.pt"
    for name, value in trained.state_dict().items():
        assert torch.equal(value, adversary.discriminator.state_dict()[name])
    write_tiny_fomm(tmp_path / "plain.pt")
    assert stage2_adversary(load_training_state(tmp_path / "plain.pt"), tmp_path / "plain.pt",
                            fomm_config(tiny_section("train_fomm")), p, cpu)[1] == "fresh"

    ckpt = load_training_state(tmp_path / "gan.pt")  # a discriminator of another shape: one line naming the file
    state = dict(ckpt["train_state"]["discriminator"])
    state[next(iter(state))] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="bad.pt"):
        stage2_adversary({**ckpt, "train_state": {"discriminator": state}}, tmp_path / "bad.pt", config, p, cpu)

    # feature matching is zero when the rendered frame is the real one; the LSGAN term (1 - D(fake))^2 is not.
    # In eval mode: in train mode spectral norm's power iteration moves the weights between the two passes
    size = config.image_size
    image = torch.rand(2, 3, size, size)
    adversary.discriminator.eval()
    losses = adversary.generator_losses(image, image)
    assert losses["feature_matching"].item() == 0.0 and losses["generator_gan"].item() > 0.0
    adversary.discriminator.train()
    before = [q.clone() for q in adversary.discriminator.parameters()]
    loss_d = adversary.update(torch.rand(2, 3, size, size), image)
    assert loss_d > 0.0
    assert any(not torch.equal(a, b) for a, b in zip(before, adversary.discriminator.parameters()))


def test_finetune_render_with_the_gan_logs_its_terms_and_says_which_discriminator(tiny_audio, tmp_path):  # noqa: F811
    from stages.finetune_render import run_finetune_render

    corpus, audio = tiny_audio
    _tiny_fomm_with_discriminator(tmp_path / "fomm.pt")
    write_tiny_emmn(tmp_path / "emmn.pt", num_kp=tiny_section("train_fomm").num_kp)
    p = dataclasses.replace(tiny_section("finetune_render"), train_generator=True, gan_weight=0.1)
    metrics = run_finetune_render(corpus, audio, tmp_path / "emmn.pt", tmp_path / "fomm.pt", tmp_path / "out.pt",
                                  tmp_path / "losses.csv", tmp_path / "report.json",
                                  tiny_section("base", precision="bf16"), p)
    assert metrics["discriminator"] == "fomm.pt" and metrics["gan_weight"] == 0.1 and metrics["precision"] == "bf16"
    rows = read_loss_csv(tmp_path / "losses.csv")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row["stage2"] > 0 and row["generator_gan"] > 0 and row["discriminator"] > 0
        assert row["feature_matching"] >= 0
    assert load_fomm(tmp_path / "out.pt").step == 3


def test_zero_steps_pass_fomm_pt_s_renderer_through_measured(tiny_audio, tmp_path):  # noqa: F811
    from stages.finetune_render import run_finetune_render

    corpus, audio = tiny_audio
    write_tiny_fomm(tmp_path / "fomm.pt")
    write_tiny_emmn(tmp_path / "emmn.pt", num_kp=tiny_section("train_fomm").num_kp)
    p = dataclasses.replace(tiny_section("finetune_render"), steps=0, train_generator=False,
                            train_dense_motion=False)  # nothing to tune is fine when nothing is tuned
    metrics = run_finetune_render(corpus, audio, tmp_path / "emmn.pt", tmp_path / "fomm.pt", tmp_path / "out.pt",
                                  tmp_path / "losses.csv", tmp_path / "report.json",
                                  tiny_section("base"), p)
    assert metrics["steps"] == 0 and metrics["train_clips"] == 0
    assert metrics["heldout_psnr_after"] == metrics["heldout_psnr_before"] > 0
    assert read_loss_csv(tmp_path / "losses.csv") == []
    passed, start = load_fomm(tmp_path / "out.pt"), load_fomm(tmp_path / "fomm.pt")
    for module in ("kp_detector", "generator"):
        a, b = getattr(start, module).state_dict(), getattr(passed, module).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_killed_fine_tuning_resumes_to_the_same_renderer(tiny_audio, tmp_path, monkeypatch):  # noqa: F811
    """GAN on (discriminator and both optimizers in the checkpoint): killed at step 2 of 3, resumed, equal."""
    from stages.finetune_render import run_finetune_render

    corpus, audio = tiny_audio
    _tiny_fomm_with_discriminator(tmp_path / "fomm.pt")
    write_tiny_emmn(tmp_path / "emmn.pt", num_kp=tiny_section("train_fomm").num_kp)

    def train(name: str, **changes):
        p = dataclasses.replace(tiny_section("finetune_render"), train_generator=True, gan_weight=0.1,
                                checkpoint_every=1, **changes)
        return run_finetune_render(corpus, audio, tmp_path / "emmn.pt", tmp_path / "fomm.pt", tmp_path / f"{name}.pt",
                                   tmp_path / f"{name}.csv", tmp_path / f"{name}.json",
                                   tiny_section("base"), p)

    straight = train("straight")
    kill_at(monkeypatch, 2)
    with pytest.raises(Killed):
        train("broken")
    monkeypatch.undo()
    assert torch.load(tmp_path / "broken.pt", weights_only=True)["step"] == 2
    assert train("broken", resume=True) == straight
    assert same_weights(tmp_path / "straight.pt", tmp_path / "broken.pt")
    assert (tmp_path / "straight.csv").read_bytes() == (tmp_path / "broken.csv").read_bytes()
