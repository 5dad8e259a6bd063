"""FOMM training: generic helpers (pipeline.training.loop), losses, VGG19 layout, the train_fomm worker on the tiny corpus."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.core.checkpoints import save_checkpoint
from pipeline.core.config import BaseParams, with_field
from pipeline.core.errors import CheckpointError, InputError
from pipeline.core.precision import pick_device
from pipeline.fomm.io import load_fomm
from pipeline.fomm.losses import (
    ANCHOR_LANDMARKS,
    RandomTransform,
    ReconstructionLoss,
    equivariance_losses,
    face_part_weights,
    landmark_anchor_loss,
    landmark_anchor_targets,
    landmark_flow_loss,
    mirror_landmarks,
    normalized_landmarks,
)
from pipeline.fomm.train import (
    FommTrainer,
    FramePairSampler,
    augment_pair,
    fomm_config,
    init_fomm,
    train_fomm_model,
)
from pipeline.models.vgg19 import PERCEPTUAL_TAPS, Vgg19Features, load_vgg19
from pipeline.training.curves import plot_loss_curves
from pipeline.training.loop import (
    Budget,
    LossLog,
    read_loss_csv,
    run_loop,
    step_rngs,
    torch_threads,
)
from stages.train_fomm import run_train_fomm
from tests.conftest import tiny_section

BASE = BaseParams(seed=7, workers=0, device="cpu")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests share 2 cores with other jobs: spinning torch threads would stall (40x slower seen at load 7)."""
    with torch_threads(1):
        yield


def assert_same_weights(a, b):
    """Two loaded FOMMs (load_fomm) with equal detector and generator weights."""
    for name in ("kp_detector", "generator"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6) for k in sa), name


def tiny_train_params(**changes):
    # GAN off unless a test turns it on (the default params switch it on at gan_start)
    return with_field(tiny_section("train_fomm"), **{"max_minutes": 0, "log_every": 1, "gan_weight": 0.0, **changes})


# ---------------------------------------------------------------------------------------------- helpers


def test_pick_device_and_bad_names():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="base.device must be auto, cpu or cuda, not 'gpu'"):
        pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            pick_device("cuda")


def test_step_rngs_depend_only_on_seed_and_step():
    a_np, a_torch = step_rngs(3, 10)
    b_np, b_torch = step_rngs(3, 10)
    assert a_np.integers(1000, size=5).tolist() == b_np.integers(1000, size=5).tolist()
    assert torch.equal(torch.rand(4, generator=a_torch), torch.rand(4, generator=b_torch))
    assert step_rngs(3, 11)[0].integers(10**9) != step_rngs(3, 10)[0].integers(10**9)


def test_loss_log_truncates_on_resume_and_plots(tmp_path):
    log = LossLog(tmp_path / "losses.csv")
    for step in range(1, 6):
        log.log(step, {"total": 10.0 / step, "equivariance": 0.0})
    log.flush()
    resumed = LossLog(tmp_path / "losses.csv", resume_step=3)
    assert [r["step"] for r in resumed.rows] == [1, 2, 3]
    resumed.log(4, {"total": 1.5, "equivariance": 0.0})
    resumed.flush()
    rows = read_loss_csv(tmp_path / "losses.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["total"] == 1.5 and rows[1]["total"] == 5.0
    assert resumed.recent_means(2) == {"total": pytest.approx((10 / 3 + 1.5) / 2), "equivariance": 0.0}
    with pytest.raises(ValueError, match="loss columns changed"):
        resumed.log(5, {"total": 1.0})
    plot_loss_curves(tmp_path / "losses.csv", tmp_path / "losses.png")
    import cv2

    img = cv2.cvtColor(cv2.imread(str(tmp_path / "losses.png")), cv2.COLOR_BGR2RGB).astype(int)
    assert img.shape == (420, 720, 3)

    def pixels(rgb):
        return int((np.abs(img - np.array(rgb)).sum(axis=2) < 40).sum())

    # `total` (first colour) is a curve across the plot; the all-zero loss has only its legend swatch.
    assert pixels((31, 119, 180)) > 250  # the plot area is 450 px wide
    assert pixels((255, 127, 14)) < 80


def test_loss_log_takes_a_term_that_joins_mid_run(tmp_path):
    log = LossLog(tmp_path / "l.csv")
    log.log(1, {"total": 2.0})
    log.log(2, {"total": 1.5, "generator_gan": 0.3})  # the GAN joined at step 2 (train_fomm's gan_start)
    log.flush()
    rows = read_loss_csv(tmp_path / "l.csv")
    assert [(r["step"], r["total"], r["generator_gan"]) for r in rows] == [(1, 2.0, 0.0), (2, 1.5, 0.3)]
    assert LossLog(tmp_path / "l.csv", resume_step=2).columns == ["step", "total", "generator_gan"]


def test_loss_log_has_no_clock_and_the_file_only_changes_whole(tmp_path):
    """Same losses, same bytes (no wall-clock column); rows reach the file only through an atomic flush, so a
    killed run leaves the last flushed (checkpointed) log, never a torn line, and no temp file."""
    path = tmp_path / "l.csv"
    path.write_text("step,seconds,total\n1,0.5,2.0\n2,9.1,1.5\n")  # a log of an earlier version
    log = LossLog(path, resume_step=2)
    assert log.columns == ["step", "total"] and path.read_text() == "step,total\n1,2.0\n2,1.5\n"
    log.log(3, {"total": 1.25})
    assert path.read_text() == "step,total\n1,2.0\n2,1.5\n"  # not flushed yet: the file is the checkpoint's
    log.flush()
    assert path.read_text().endswith("3,1.25\n") and sorted(p.name for p in tmp_path.iterdir()) == ["l.csv"]
    again = LossLog(tmp_path / "again.csv")
    for step, total in ((1, 2.0), (2, 1.5), (3, 1.25)):
        again.log(step, {"total": total})
    again.flush()
    assert (tmp_path / "again.csv").read_bytes() == path.read_bytes()


def test_run_loop_budget_checkpoints_and_nan(tmp_path):
    saved = []
    log = LossLog(tmp_path / "l.csv")
    final = run_loop(lambda step: {"loss": 1.0 / (step + 1)}, start_step=2, budget=Budget(steps=9), log=log,
                     log_every=3, checkpoint_fn=saved.append, checkpoint_every=3, description="t")
    assert final == 9
    assert saved == [3, 6]  # the caller saves the final state itself
    assert [r["step"] for r in log.rows] == [3, 6, 9]
    assert log.rows[0]["loss"] == pytest.approx(1 / 3)  # mean of the single step since start (step index 2)
    assert log.rows[1]["loss"] == pytest.approx((1 / 4 + 1 / 5 + 1 / 6) / 3)
    assert Budget(steps=100, max_minutes=1e-9).exhausted(0)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 1"):
        run_loop(lambda step: {"loss": math.nan}, start_step=0, budget=Budget(steps=3), log=LossLog(tmp_path / "n.csv"),
                 log_every=1)


# ----------------------------------------------------------------------------------------------- losses


def test_identity_transform_returns_frame_and_zero_equivariance():
    config = fomm_config(tiny_train_params())
    kp_detector = init_fomm(config, 0)[0].eval()
    frame = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    identity = RandomTransform.identity(2)
    assert torch.allclose(identity.transform_frame(frame), frame, atol=1e-5)  # float32 grid rounding only
    with torch.no_grad():
        losses = equivariance_losses(kp_detector(frame), kp_detector(identity.transform_frame(frame)), identity)
    assert float(losses["equivariance_value"]) < 1e-6
    assert float(losses["equivariance_jacobian"]) < 1e-5


def test_equivariance_hand_computed_translation():
    # T(z) = z + (0.1, -0.2): a keypoint at p in X is at p - t in T(X).
    shift = torch.tensor([0.1, -0.2])
    transform = RandomTransform(torch.tensor([[[1.0, 0.0, 0.1], [0.0, 1.0, -0.2]]]), torch.zeros(1, 2),
                                torch.zeros(1, 1, 2))
    value = torch.tensor([[[0.3, 0.4], [-0.5, 0.2]]])
    jac_d = torch.tensor([[2.0, 0.0], [0.0, 1.0]]).expand(1, 2, 2, 2)
    exact = equivariance_losses({"value": value, "jacobian": jac_d}, {"value": value - shift, "jacobian": jac_d},
                                transform)
    assert float(exact["equivariance_value"]) == pytest.approx(0.0, abs=1e-7)
    assert float(exact["equivariance_jacobian"]) == pytest.approx(0.0, abs=1e-7)
    # Off by (0.03, 0) in x -> mean |error| over 4 coordinates = 0.015; J_d^-1 J_t = diag(1, 1.5) -> 0.5 / 4.
    jac_t = torch.tensor([[2.0, 0.0], [0.0, 1.5]]).expand(1, 2, 2, 2)
    off = equivariance_losses({"value": value, "jacobian": jac_d},
                              {"value": value - shift + torch.tensor([0.03, 0.0]), "jacobian": jac_t}, transform)
    assert float(off["equivariance_value"]) == pytest.approx(0.015, abs=1e-6)
    assert float(off["equivariance_jacobian"]) == pytest.approx(0.125, abs=1e-6)


def test_transform_jacobian_matches_autograd():
    transform = RandomTransform.random(1, sigma_affine=0.05, sigma_tps=0.05, points_tps=5,
                                       generator=torch.Generator().manual_seed(3))
    points = torch.tensor([[0.13, -0.42], [0.5, 0.5], [-0.77, 0.21]])  # (0.5, 0.5) is a control point
    analytic = transform.jacobian(points[None].double())[0]
    for i, point in enumerate(points.double()):
        numeric = torch.autograd.functional.jacobian(lambda z: transform.warp_coordinates(z.view(1, 1, 2))[0, 0],
                                                     point)
        assert torch.allclose(analytic[i], numeric, atol=1e-8), (i, analytic[i], numeric)
    assert float((analytic - torch.eye(2)).abs().max()) > 0.01  # the random transform is not the identity


def test_reconstruction_loss_kinds():
    prediction, target = torch.zeros(2, 3, 16, 16), torch.full((2, 3, 16, 16), 0.5)
    l1 = ReconstructionLoss((1,), weight=10.0)
    assert l1.kind == "multiscale_l1" and float(l1(prediction, target)) == pytest.approx(5.0)
    assert float(ReconstructionLoss((1, 0.5), weight=10.0)(target, target)) == 0.0
    perceptual = ReconstructionLoss((1,), weight=1.0, vgg=Vgg19Features())
    assert perceptual.kind == "perceptual_vgg19"
    assert float(perceptual(target, target)) == 0.0 and float(perceptual(prediction, target)) > 0.0


def test_face_part_weights_cover_the_brow_eye_and_mouth_boxes():
    landmarks = np.full((2, 68, 2), 10.0, np.float32)  # 20 px landmark space
    landmarks[0, 17:27] = landmarks[0, 36:48] = [[4, 4]]
    landmarks[0, 17] = [8, 6]  # brows/eyes box x 4..8, y 4..6
    landmarks[0, 48:68] = [[6, 12]]
    landmarks[0, 48] = [10, 14]  # mouth box x 6..10, y 12..14
    landmarks[1] = np.nan  # no landmarks: uniform
    weights = face_part_weights(landmarks, landmark_size=20, image_size=10, part_weight=2.0, margin=0.0)
    expected = np.ones((10, 10), np.float32)
    expected[2:3, 2:4] = 3.0  # halved: y 2..3, x 2..4
    expected[6:7, 3:5] = 3.0
    assert weights.shape == (2, 1, 10, 10)
    np.testing.assert_array_equal(weights[0, 0].numpy(), expected)
    assert torch.equal(weights[1], torch.ones(1, 10, 10))


def test_weighted_reconstruction_loss_is_a_weighted_mean():
    target = torch.zeros(1, 3, 4, 4)
    prediction = target.clone()
    prediction[..., 0, 0] = 1.0  # one wrong pixel
    weights = torch.ones(1, 1, 4, 4)
    weights[..., 0, 0] = 4.0
    loss = ReconstructionLoss((1,), weight=1.0)
    assert float(loss(prediction, target)) == pytest.approx(1 / 16)
    assert float(loss(prediction, target, weights)) == pytest.approx(4 / 19)  # sum(w|e|) / sum(w)
    assert float(loss(prediction, target, torch.ones(1, 1, 4, 4))) == pytest.approx(1 / 16)


def test_landmark_anchor_targets_hand_computed():
    landmarks = np.zeros((2, 68, 2), np.float32)
    landmarks[0, 17], landmarks[0, 18], landmarks[0, 19] = (1.5, 3.5), (3.5, 5.5), (5.5, 7.5)  # mean (3.5, 5.5)
    landmarks[0, 57], landmarks[0, 66] = (9.5, 9.5), (9.5, 11.5)  # mean (9.5, 10.5)
    landmarks[1] = np.nan  # a MEAD frame: no landmarks
    points = normalized_landmarks(landmarks, landmark_size=10)
    assert torch.allclose(points[0, 17], torch.tensor([-0.6, -0.2]))  # 2 (1.5 + 0.5) / 10 - 1, 2 (3.5 + 0.5) / 10 - 1
    targets = landmark_anchor_targets(points)
    assert targets.shape == (2, len(ANCHOR_LANDMARKS), 2)
    # x = 2 (px + 0.5) / 10 - 1: px 3.5 -> -0.2, 5.5 -> 0.2, 9.5 -> 1.0, 10.5 -> 1.2
    assert torch.allclose(targets[0, 0], torch.tensor([-0.2, 0.2])) and torch.allclose(targets[0, 9],
                                                                                         torch.tensor([1.0, 1.2]))
    assert torch.isnan(targets[1]).all()


def test_mirrored_landmarks_keep_their_parts():
    """Mirroring the frame (px -> size - 1 - px) mirrors the normalized points (x -> -x), and the dlib
    re-indexing keeps each index on its part: the image-left brow is still 17-21 after the flip."""
    rng = np.random.default_rng(0)
    landmarks = rng.uniform(0, 31, (1, 68, 2)).astype(np.float32)
    points = normalized_landmarks(landmarks, 32)
    mirrored = mirror_landmarks(points)
    assert torch.equal(mirror_landmarks(mirrored), points)
    assert torch.allclose(mirrored[0, 17], torch.tensor([-points[0, 26, 0], points[0, 26, 1]]))  # brow ends swap
    assert torch.allclose(mirrored[0, 30], torch.tensor([-points[0, 30, 0], points[0, 30, 1]]))  # nose tip stays
    assert torch.allclose(mirrored[0, 37], torch.tensor([-points[0, 44, 0], points[0, 44, 1]]))  # upper lids swap
    assert torch.allclose(mirrored[0, 48], torch.tensor([-points[0, 54, 0], points[0, 54, 1]]))  # mouth corners
    flipped_pixels = landmarks.copy()
    flipped_pixels[..., 0] = 31 - flipped_pixels[..., 0]
    assert torch.allclose(mirrored.sort(dim=1).values, normalized_landmarks(flipped_pixels, 32).sort(dim=1).values,
                          atol=1e-6)
    # Anchors of a mirrored frame: left and right parts exchange, x negated.
    anchors, anchors_mirrored = landmark_anchor_targets(points), landmark_anchor_targets(mirrored)
    assert torch.allclose(anchors_mirrored[0, 0], anchors[0, 3] * torch.tensor([-1.0, 1.0]))
    assert torch.allclose(anchors_mirrored[0, 8], anchors[0, 8] * torch.tensor([-1.0, 1.0]))


def test_landmark_flow_loss_hand_computed():
    # A flow that shifts everything by +0.1 in x: D(z) = z + (0.1, 0) (sampled at pixel centres of a 4x4 field).
    size = 4
    centres = (2 * (torch.arange(size) + 0.5) / size - 1)
    grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), dim=-1)  # [h,w,(x,y)]
    deformation = (grid + torch.tensor([0.1, 0.0])).unsqueeze(0).repeat(2, 1, 1, 1)
    driving = torch.zeros(2, 68, 2)
    driving[:, :, 0] = centres[1]  # on the field's samples: bilinear reads them exactly
    driving[:, :, 1] = centres[2]
    source = driving.clone()
    source[:, :, 0] += 0.1
    assert float(landmark_flow_loss(deformation, driving, source)) == pytest.approx(0.0, abs=1e-6)
    source[0, :, 1] += 0.3  # frame 0 misses by 0.3 in y on every landmark: mean over 2 x 68 x 2 values
    assert float(landmark_flow_loss(deformation, driving, source)) == pytest.approx(0.3 / 4, rel=1e-5)
    source[1] = float("nan")  # frame 1 without landmarks: only frame 0 counts
    assert float(landmark_flow_loss(deformation, driving, source)) == pytest.approx(0.3 / 2, rel=1e-5)


def test_landmark_anchor_loss_reads_the_first_keypoints_of_frames_with_landmarks():
    value = torch.zeros(3, 12, 2)
    value[0, :10, 0] = 0.5
    targets = torch.zeros(3, 10, 2)
    targets[2] = float("nan")
    # frame 0: |0.5| on x of 10 anchors, frame 1: 0, frame 2 skipped; keypoints 10, 11 are free
    assert float(landmark_anchor_loss(value, targets)) == pytest.approx(0.5 * 10 / 40)
    assert float(landmark_anchor_loss(value, torch.full((3, 10, 2), float("nan")))) == 0.0


def test_augmentation_is_shared_by_the_pair_and_keeps_grey_grey():
    frame = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    same, off, _, _ = augment_pair(frame, frame.clone(), torch.Generator().manual_seed(1), flip=False, jitter=0.0)
    assert torch.equal(same, frame) and torch.equal(off, frame)
    source, driving, _, _ = augment_pair(frame, frame.clone(), torch.Generator().manual_seed(1), flip=True, jitter=0.1)
    assert torch.equal(source, driving)  # one draw per pair: both frames get the same flip and colours
    flipped = augment_pair(frame, frame, torch.Generator().manual_seed(2), flip=True, jitter=0.0)[0]
    mirrored = [torch.equal(flipped[i], frame[i].flip(-1)) for i in range(6)]
    kept = [torch.equal(flipped[i], frame[i]) for i in range(6)]
    assert all(m != k for m, k in zip(mirrored, kept)) and 0 < sum(mirrored) < 6
    weights = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    points = torch.rand(2, 6, 68, 2, generator=torch.Generator().manual_seed(5))
    _, _, moved, moved_points = augment_pair(frame, frame, torch.Generator().manual_seed(2), flip=True, jitter=0.0,
                                             pixel_weights=weights, landmarks=points)
    assert all(torch.equal(moved[i], weights[i].flip(-1) if mirrored[i] else weights[i]) for i in range(6))
    assert all(torch.equal(moved_points[:, i], mirror_landmarks(points[:, i]) if mirrored[i] else points[:, i])
               for i in range(6))
    grey = torch.full((4, 3, 5, 5), 0.5)
    out = augment_pair(grey, grey, torch.Generator().manual_seed(3), flip=True, jitter=0.1)[0]
    assert float((out - out.mean(dim=1, keepdim=True)).abs().max()) < 1e-6  # hue/saturation leave grey grey
    assert 0.5 * 0.9 - 1e-6 <= float(out.min()) and float(out.max()) <= 0.5 * 1.1 + 1e-6  # brightness +-10%


# -------------------------------------------------------------------------------------------------- VGG19


def vgg19_conv_indices() -> list[int]:
    return [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]


def test_vgg19_layout_is_torchvisions(tmp_path):
    model = Vgg19Features()
    expected = [f"features.{i}.{kind}" for i in vgg19_conv_indices() for kind in ("weight", "bias")]
    assert list(model.state_dict()) == expected
    assert sum(p.numel() for p in model.parameters()) == 20_024_384  # torchvision vgg19().features
    assert PERCEPTUAL_TAPS == {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}
    maps = model(torch.rand(1, 3, 32, 32))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]

    # A torchvision-format file (features + classifier) loads strictly; classifier keys are ignored.
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)
    torch.save(state, tmp_path / "vgg19.pth")
    loaded = load_vgg19(tmp_path / "vgg19.pth")
    assert torch.equal(loaded.features[34].weight, state["features.34.weight"])
    del state["features.10.bias"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="missing key 'features.10.bias'"):
        load_vgg19(tmp_path / "broken.pth")


# ---------------------------------------------------------------------------------------------- training


def test_training_steps_lower_the_loss_on_a_fixed_batch(tiny_corpus):
    p = tiny_train_params(lr=1e-3)
    trainer = FommTrainer(fomm_config(p), p, torch.device("cpu"), seed=0)
    source, driving = FramePairSampler(tiny_corpus, 64).sample(np.random.default_rng(0), 4)
    totals = [trainer.train_step(source, driving, step_rngs(0, 0)[1])["total"] for _ in range(25)]
    assert np.mean(totals[-3:]) < 0.6 * np.mean(totals[:3]), totals


@pytest.mark.parametrize("changes, vgg, columns", [
    ({"trainer_bf16": True}, False, {"total", "reconstruction", "equivariance_value", "equivariance_jacobian"}),
    ({"gan_weight": 1.0}, True, {"total", "reconstruction", "equivariance_value", "equivariance_jacobian",
                                 "generator_gan", "feature_matching", "discriminator"}),
    ({"landmark_anchors": 1.0, "landmark_flow": 1.0, "num_kp": 10}, False,
     {"total", "reconstruction", "equivariance_value", "equivariance_jacobian", "landmark_anchors", "landmark_flow"}),
    ({"equivariance_value_weight": 0, "equivariance_jacobian_weight": 0}, False,
     {"total", "reconstruction", "equivariance_value", "equivariance_jacobian"}),
])
def test_optional_paths_train_one_step(changes, vgg, columns):
    changes = dict(changes)
    bf16 = changes.pop("trainer_bf16", False)
    p = tiny_train_params(**changes)
    trainer = FommTrainer(fomm_config(p), p, torch.device("cpu"), seed=0, vgg=Vgg19Features() if vgg else None,
                          bf16=bf16)
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    landmarks = torch.rand(2, 2, 68, 2) * 2 - 1 if changes.get("landmark_anchors") else None
    losses = trainer.train_step(images[:2], images[2:], step_rngs(0, 0)[1], landmarks=landmarks)
    assert set(losses) == columns and all(math.isfinite(v) for v in losses.values())
    assert losses["total"] == pytest.approx(sum(v for k, v in losses.items() if k not in ("total", "discriminator")),
                                            rel=1e-5)
    if "equivariance_value_weight" in changes:
        assert losses["equivariance_value"] == 0.0 and losses["total"] == pytest.approx(losses["reconstruction"])
    if vgg:
        assert trainer.reconstruction.kind == "perceptual_vgg19"


def test_pair_sampler_uses_train_real_clips(tiny_corpus):
    import pandas as pd

    sampler = FramePairSampler(tiny_corpus, 32)
    manifest = pd.read_parquet(tiny_corpus / "manifest.parquet")
    train_real = manifest[(manifest.split == "train") & (manifest.kind == "real")]
    assert sampler.num_clips == len(train_real) and sampler.num_frames == int(train_real.frames.sum())
    source, driving = sampler.sample(np.random.default_rng(1), 3)
    assert source.shape == driving.shape == (3, 3, 32, 32)
    assert 0.0 <= float(source.min()) and float(source.max()) <= 1.0
    assert float((source - driving).abs().mean()) > 0.0  # two different frames


@pytest.mark.parametrize("cross_clip", [0.0, 1.0])
def test_pair_sampler_cross_clip_pairs_come_from_two_clips_of_one_actor(tiny_corpus, cross_clip):
    import pandas as pd

    manifest = pd.read_parquet(tiny_corpus / "manifest.parquet")
    train_real = manifest[(manifest.split == "train") & (manifest.kind == "real")]
    sampler = FramePairSampler(tiny_corpus, 32, cross_clip=cross_clip)

    def clip_of(frame: int) -> pd.Series:
        return train_real[(train_real.start <= frame) & (frame < train_real.stop)].iloc[0]

    for source, driving in sampler.sample_rows(np.random.default_rng(2), 40):
        a, b = clip_of(source), clip_of(driving)
        assert a.actor == b.actor
        assert (a.clip_id != b.clip_id) == (cross_clip == 1.0)
        if cross_clip == 0.0:
            assert source != driving


def test_pair_sampler_without_cross_clip_keeps_the_same_clip_random_stream(tiny_corpus):
    # cross_clip 0 draws nothing extra: runs (and checkpoints) from before the option stay reproducible
    sampler = FramePairSampler(tiny_corpus, 32)
    rng = np.random.default_rng(5)
    expected = []
    for c in rng.integers(sampler.num_clips, size=6):
        i, j = rng.choice(int(sampler.lengths[c]), size=2, replace=False)
        expected.append((int(sampler.starts[c] + i), int(sampler.starts[c] + j)))
    assert sampler.sample_rows(np.random.default_rng(5), 6) == expected


def test_train_resume_continues_the_step_count_and_equals_an_uninterrupted_run(tiny_corpus, tmp_path):
    straight = tmp_path / "straight"
    run_train_fomm(tiny_corpus, straight / "fomm.pt", straight / "l.csv", BASE,
                   tiny_train_params(steps=4))
    split = tmp_path / "split"
    train_fomm_model(tiny_corpus, split / "fomm.pt", split / "l.csv", BASE, tiny_train_params(steps=2),
                     log=lambda s: None)
    assert load_fomm(split / "fomm.pt").step == 2
    summary = train_fomm_model(tiny_corpus, split / "fomm.pt", split / "l.csv", BASE,
                               tiny_train_params(steps=4, resume=True), log=lambda s: None)
    assert summary["steps"] == 4
    a, b = load_fomm(straight / "fomm.pt"), load_fomm(split / "fomm.pt")
    assert a.step == b.step == 4
    assert_same_weights(a, b)
    assert [r["step"] for r in read_loss_csv(split / "l.csv")] == [1, 2, 3, 4]
    assert read_loss_csv(split / "l.csv")[-1]["total"] == pytest.approx(read_loss_csv(straight / "l.csv")[-1]["total"],
                                                                        rel=1e-5)
    ckpt = torch.load(split / "fomm.pt", weights_only=True)
    assert set(ckpt) >= {"model", "config", "step", "metrics", "train_state"}
    assert set(ckpt["model"]) == {"kp_detector", "generator"}
    assert ckpt["metrics"]["reconstruction_loss"] == "multiscale_l1"

    with pytest.raises(InputError, match="cannot resume, model config differs from params \\(num_kp"):
        train_fomm_model(tiny_corpus, split / "fomm.pt", split / "l.csv", BASE,
                         tiny_train_params(steps=6, resume=True, num_kp=4), log=lambda s: None)


def test_gan_joining_at_gan_start_resumes_a_gan_less_checkpoint_like_an_unbroken_run(tiny_corpus, tmp_path):
    gan = {"gan_weight": 1.0, "gan_start": 2}
    straight = tmp_path / "straight"
    train_fomm_model(tiny_corpus, straight / "fomm.pt", straight / "l.csv", BASE, tiny_train_params(steps=4, **gan),
                     log=lambda s: None)
    split = tmp_path / "split"
    train_fomm_model(tiny_corpus, split / "fomm.pt", split / "l.csv", BASE, tiny_train_params(steps=2),
                     log=lambda s: None)  # no GAN at all: the checkpoint has no discriminator
    lines = []
    train_fomm_model(tiny_corpus, split / "fomm.pt", split / "l.csv", BASE,
                     tiny_train_params(steps=4, resume=True, **gan), log=lines.append)
    assert any("has no discriminator (step 2 <= gan_start 2): it starts fresh" in line for line in lines)
    a, b = load_fomm(straight / "fomm.pt"), load_fomm(split / "fomm.pt")
    assert_same_weights(a, b)
    for path in (straight / "l.csv", split / "l.csv"):
        rows = read_loss_csv(path)
        assert [r["generator_gan"] > 0 for r in rows] == [False, False, True, True], path
        assert [r["discriminator"] > 0 for r in rows] == [False, False, True, True], path
    assert "discriminator" in torch.load(split / "fomm.pt", weights_only=True)["train_state"]

    # past gan_start a GAN-less checkpoint cannot stand in for an unbroken run
    late = tmp_path / "late"
    train_fomm_model(tiny_corpus, late / "fomm.pt", late / "l.csv", BASE, tiny_train_params(steps=3),
                     log=lambda s: None)
    with pytest.raises(CheckpointError, match="cannot resume: no 'discriminator' in train_state"):
        train_fomm_model(tiny_corpus, late / "fomm.pt", late / "l.csv", BASE,
                         tiny_train_params(steps=4, resume=True, **gan), log=lambda s: None)


def test_bad_inputs_fail_in_one_line(tmp_path, tiny_corpus):
    with pytest.raises(InputError, match="manifest.parquet: corpus manifest not found"):
        train_fomm_model(tmp_path / "nowhere", tmp_path / "f.pt", tmp_path / "l.csv", BASE, tiny_train_params())
    with pytest.raises(InputError, match="train_fomm.preset must be one of"):
        fomm_config(tiny_train_params(preset="huge"))
    with pytest.raises(InputError, match="unknown FOMM config key 'generator.widht'"):
        fomm_config(tiny_train_params(model={"generator": {"widht": 3}}))
    with pytest.raises(CheckpointError, match="vox-cpk.pth.tar: checkpoint file not found"):
        train_fomm_model(tiny_corpus, tmp_path / "f.pt", tmp_path / "l.csv", BASE,
                         tiny_train_params(pretrained=str(tmp_path / "vox-cpk.pth.tar")))
    assert not (tmp_path / "f.pt").exists()
    save_checkpoint(tmp_path / "other.pt", model={"x": {}}, config={}, step=0)
    with pytest.raises(CheckpointError, match="model needs kp_detector and generator"):
        load_fomm(tmp_path / "other.pt")


def test_landmark_anchors_need_enough_keypoints_and_the_sampler_gives_both_frames_points(tiny_corpus):
    with pytest.raises(InputError, match="landmark_anchors pins 10 keypoints: num_kp must be at least that, not 5"):
        fomm_config(tiny_train_params(landmark_anchors=1.0, num_kp=5))
    sampler = FramePairSampler(tiny_corpus, 32)
    rows = sampler.sample_rows(np.random.default_rng(0), 3)
    points = sampler.landmark_points(rows)
    assert points.shape == (2, 3, 68, 2) and float(points.abs().max()) < 1.0  # the corpus's faces lie inside
    expected = 2 * (sampler.landmarks[rows[1][1]] + 0.5) / sampler.frames.shape[2] - 1
    assert np.allclose(points[1, 1].numpy(), expected, atol=1e-6)
