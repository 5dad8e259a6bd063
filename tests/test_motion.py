"""Motion Reconstruction (issue 6): Eq. 1-5 by hand, the MotionNet contract, train_motion / decompose /
motion_report on the tiny corpus, the Table 2 runner, and the DVC wiring of the new stages."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
import zarr

from pipeline.core.config import with_field
from pipeline.core.errors import CheckpointError, InputError
from pipeline.core.store import read_clip, read_index
from pipeline.models.motion import (
    MotionConfig,
    MotionNet,
    decode_frames,
    encode_frames,
    init_motion,
    load_motion,
)
from pipeline.motion.data import KeypointBank, QuadrupleFrames, select_quadruples
from pipeline.motion.losses import (
    DisentanglementWeights,
    actor_centering_loss,
    cross_reconstruction_loss,
    disentanglement_loss,
    expression_consistency_loss,
    feature_distance,
    motion_distance,
    mouth_consistency_loss,
    self_reconstruction_loss,
)
from pipeline.motion.report import (
    classifier_accuracy,
    evaluation_quadruples,
    heldout_cross_rows,
    motion_errors,
)
from pipeline.motion.train import loss_weights
from pipeline.training.loop import read_loss_csv, torch_threads
from tests.conftest import ROOT, tiny_section
from tests.dvc_closure import expanded_stages
from tests.motion_fixtures import BASE, motion_inputs  # noqa: F401  (fixture)

REPORT_KEYS = {"probe": ("emotion_acc_from_fe", "emotion_acc_from_fm", "mouth_r2_from_fm", "mouth_r2_from_fe"),
               "recon": ("self", "cross", "cross_vs_counterfactual")}


@pytest.fixture(autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


def motion(value, jacobian=None) -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.tensor(value, dtype=torch.float32)
    j = torch.zeros(*v.shape[:-1], 2, 2) if jacobian is None else torch.tensor(jacobian, dtype=torch.float32)
    return v, j


# ----------------------------------------------------------------------------------------------- losses


def test_motion_distance_is_the_mean_keypoint_l2_of_value_and_jacobian():
    zero = motion([[[0.0, 0.0], [0.0, 0.0]]])
    # keypoint 0 off by (3, 4) -> 5, keypoint 1 exact -> 0: mean 2.5
    assert float(motion_distance(motion([[[3.0, 4.0], [0.0, 0.0]]]), zero)) == pytest.approx(2.5, abs=1e-5)
    # Jacobian of keypoint 1 off by 1 in all 4 entries: |dj|_F = 2; weight 0.5 -> 1; value exact -> (0 + 1) / 2
    jac = [[[[0, 0], [0, 0]], [[1, 1], [1, 1]]]]
    assert float(motion_distance(motion([[[0.0, 0.0], [0.0, 0.0]]], jac), zero, 0.5)) == pytest.approx(0.5, abs=1e-5)
    # value (3, 0) and Jacobian (4 in one entry) on one keypoint: sqrt(9 + 16) = 5; two frames average
    one = motion([[[3.0, 0.0]], [[0.0, 0.0]]], [[[[4, 0], [0, 0]]], [[[0, 0], [0, 0]]]])
    assert float(motion_distance(one, motion([[[0.0, 0.0]], [[0.0, 0.0]]]))) == pytest.approx(2.5, abs=1e-5)


def test_feature_distance_and_the_four_terms_by_hand():
    a, zero = torch.tensor([[3.0, 4.0], [6.0, 8.0]]), torch.zeros(2, 2)
    assert float(feature_distance(a, zero)) == pytest.approx(7.5, abs=1e-5)  # (5 + 10) / 2
    far, near, exact = motion([[[3.0, 4.0]]]), motion([[[0.0, 1.0]]]), motion([[[0.0, 0.0]]])
    # Eq. 1 / 2: the sum of two motion distances (5 + 1)
    assert float(cross_reconstruction_loss(far, exact, near, exact)) == pytest.approx(6.0, abs=1e-5)
    assert float(self_reconstruction_loss(exact, exact, near, exact)) == pytest.approx(1.0, abs=1e-5)
    # Eq. 3: f_e(x_ia) vs f_e(y_ib) = 5, f_e(x_jb) vs f_e(y_ja) = 0
    f = torch.tensor([[3.0, 4.0]])
    assert float(expression_consistency_loss(f, torch.zeros(1, 2), f, f)) == pytest.approx(5.0, abs=1e-5)
    # Eq. 4 pairs x_ia with y_ja (|(0,0)-(0,2)| = 2) and x_jb with y_ib (|(3,0)-(3,4)| = 4): 6; the other
    # pairing would give 5 + sqrt(13)
    x_ia, y_ja, x_jb, y_ib = (torch.tensor([v]) for v in ([0.0, 0.0], [0.0, 2.0], [3.0, 0.0], [3.0, 4.0]))
    assert float(mouth_consistency_loss(x_ia, y_ja, x_jb, y_ib)) == pytest.approx(6.0, abs=1e-5)
    assert float(mouth_consistency_loss(x_ia, y_ib, x_jb, y_ja)) == pytest.approx(5.0 + 13 ** 0.5, abs=1e-5)


def test_actor_centering_loss_is_the_between_actor_share_of_the_variance_by_hand():
    # actor 7: rows (0,0), (2,0) -> mean (1,0); actor 3: row (4,3); overall mean (2,1)
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 3.0]])
    actor = torch.tensor([7, 7, 3])
    # between: 2/3 * |(1,0)-(2,1)|^2 + 1/3 * |(4,3)-(2,1)|^2 = 4; total: (5 + 1 + 8) / 3 = 14/3 -> 6/7
    assert float(actor_centering_loss(features, actor)) == pytest.approx(6 / 7, abs=1e-6)
    assert float(actor_centering_loss(features * 0.01, actor)) == pytest.approx(6 / 7, abs=1e-5)  # no scale escape
    # what varies within an actor costs nothing
    assert float(actor_centering_loss(torch.tensor([[0.0], [5.0], [0.0], [5.0]]), torch.tensor([0, 0, 1, 1]))) == 0.0


def test_subset_batch_norm_takes_its_statistics_from_the_given_rows():
    from pipeline.models.motion import SubsetBatchNorm

    norm = SubsetBatchNorm(1, affine=False, eps=1e-20, momentum=None)
    x = torch.tensor([[0.0], [2.0], [100.0]])  # the third row (a pseudo label) must not set the scale
    out = norm(x, torch.tensor([True, True, False]))
    torch.testing.assert_close(out, torch.tensor([[-1.0], [1.0], [99.0]]))  # mean 1, std 1 from rows 0, 1
    torch.testing.assert_close(norm.running_mean, torch.tensor([1.0]))  # momentum None: the exact average
    torch.testing.assert_close(norm.running_var, torch.tensor([2.0]))  # unbiased, as BatchNorm1d keeps it
    plain = SubsetBatchNorm(1, affine=False, eps=1e-20)
    torch.testing.assert_close(plain(x), (x - x.mean()) / x.std(unbiased=False))  # no rows given: BatchNorm1d


def test_label_weights_drop_untrusted_targets_from_every_term():
    # two samples: distances 5 and 10; weight (1, 0) keeps 5, (0, 1) keeps 10, (0, 0) gives 0, (1, 1) the mean 7.5
    a, zero = torch.tensor([[3.0, 4.0], [6.0, 8.0]]), torch.zeros(2, 2)
    for w, expected in (((1.0, 0.0), 5.0), ((0.0, 1.0), 10.0), ((0.0, 0.0), 0.0), ((1.0, 1.0), 7.5)):
        assert float(feature_distance(a, zero, torch.tensor(w))) == pytest.approx(expected, abs=1e-5)
    two = motion([[[3.0, 4.0]], [[0.0, 1.0]]])  # motion distances 5 and 1 from the origin
    origin = motion([[[0.0, 0.0]], [[0.0, 0.0]]])
    keep_second, keep_both = torch.tensor([0.0, 1.0]), torch.ones(2)
    # Eq. 1: y_ib term keeps only the second sample (1), y_ja term both (3): 4
    assert float(cross_reconstruction_loss(two, origin, two, origin, 1.0, keep_second, keep_both)) == \
        pytest.approx(4.0, abs=1e-5)
    # Eq. 3 / 4: a zero-weight label neither pulls nor is pulled (its gradient is exactly 0)
    f_y = torch.tensor([[3.0, 4.0], [0.0, 0.0]], requires_grad=True)
    loss = expression_consistency_loss(zero, f_y, zero, zero, weight_ib=torch.tensor([0.0, 1.0]))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-5) and float(f_y.grad[0].abs().sum()) == 0.0
    assert float(mouth_consistency_loss(a, zero, a, zero, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))) == \
        pytest.approx(15.0, abs=1e-5)


def test_eq5_weights_and_ablation_switches():
    terms = [torch.tensor(v) for v in (1.0, 2.0, 3.0, 4.0)]
    weights = DisentanglementWeights(rec=1.0, self_rec=1.0, e_con=0.1, m_con=0.2)
    assert float(disentanglement_loss(*terms, weights)) == pytest.approx(1 + 2 + 0.3 + 0.8)
    p = tiny_section("train_motion", lambda_e_con=0.1, lambda_m_con=0.2)
    assert loss_weights(p) == weights
    assert loss_weights(with_field(p, use_rec=False)).rec == 0.0
    assert float(disentanglement_loss(*terms, loss_weights(with_field(p, use_rec=False)))) == pytest.approx(3.1)
    assert loss_weights(with_field(p, use_self=False)).self_rec == 0.0
    no_con = loss_weights(with_field(p, use_con=False))
    assert (no_con.e_con, no_con.m_con, no_con.rec, no_con.self_rec) == (0.0, 0.0, 1.0, 1.0)


def test_numpy_report_distance_equals_the_loss():
    gen = torch.Generator().manual_seed(0)
    a = (torch.randn(4, 3, 2, generator=gen), torch.randn(4, 3, 2, 2, generator=gen))
    b = (torch.randn(4, 3, 2, generator=gen), torch.randn(4, 3, 2, 2, generator=gen))
    per_frame = motion_errors(a[0].numpy(), a[1].numpy(), b[0].numpy(), b[1].numpy())
    assert per_frame.shape == (4,)
    assert float(per_frame.mean()) == pytest.approx(float(motion_distance(a, b)), rel=1e-5)


# ------------------------------------------------------------------------------------------------ model


def test_motion_net_shapes_and_an_untrained_decoder_returns_the_neutral_frame():
    config = MotionConfig(num_kp=5, expression_dim=6, mouth_dim=3, hidden=16, layers=2)
    net = init_motion(config, seed=0)
    gen = torch.Generator().manual_seed(1)
    value, jacobian = torch.rand(7, 5, 2, generator=gen), torch.rand(7, 5, 2, 2, generator=gen)
    neu_v, neu_j = torch.rand(7, 5, 2, generator=gen), torch.rand(7, 5, 2, 2, generator=gen)
    f_e = net.encode_expression(value, jacobian, neu_v, neu_j)
    f_m = net.encode_mouth(value, jacobian, neu_v, neu_j)
    assert f_e.shape == (7, 6) and f_m.shape == (7, 3)
    # training mode: every feature dimension standardised over the batch (no constant, no shrunk feature)
    assert torch.allclose(f_m.mean(dim=0), torch.zeros(3), atol=1e-5)
    variance = f_m.var(dim=0, unbiased=False)
    assert torch.allclose(variance, torch.ones(3), atol=1e-4)
    shrunk_net = copy.deepcopy(net)
    with torch.no_grad():  # an encoder whose output scale has shrunk (the default run's E_m: variance ~1e-9)
        shrunk_net.mouth_encoder.net[-1].weight.mul_(1e-5)
        shrunk_net.mouth_encoder.net[-1].bias.mul_(1e-5)
    shrunk = shrunk_net.encode_mouth(value, jacobian, neu_v, neu_j).var(dim=0, unbiased=False)
    assert torch.allclose(shrunk, torch.ones(3), atol=1e-3)  # with BatchNorm's default eps 1e-5: ~0.01
    layer = init_motion(MotionConfig(num_kp=5, expression_dim=6, mouth_dim=3, hidden=16, feature_norm="layer"), 0)
    f_layer = layer.encode_expression(value, jacobian, neu_v, neu_j)  # per vector: norm sqrt(dim)
    assert torch.allclose(f_layer.norm(dim=1), torch.full((7,), 6 ** 0.5), atol=5e-3)
    with pytest.raises(InputError, match="feature_norm must be one of"):
        MotionConfig(feature_norm="group")
    with pytest.raises(ValueError, match="eval mode"):
        encode_frames(net, value.numpy(), jacobian.numpy(), neu_v.numpy(), neu_j.numpy())
    out_v, out_j = net.decode(f_e, f_m, neu_v, neu_j)
    assert out_v.shape == (7, 5, 2) and out_j.shape == (7, 5, 2, 2)
    assert torch.equal(out_v, neu_v) and torch.equal(out_j, neu_j)  # zero-initialised last layer
    both = net.encode(value, jacobian, neu_v, neu_j)
    assert torch.equal(both[0], f_e) and torch.equal(both[1], f_m)
    with pytest.raises(ValueError, match="relative to the actor's neutral keypoints"):
        net.encode_expression(value, jacobian)
    absolute = init_motion(MotionConfig(num_kp=5, expression_dim=6, mouth_dim=3, hidden=16, relative_input=False,
                                        neutral_to_decoder=True), 0)
    assert absolute.encode_mouth(value, jacobian).shape == (7, 3)  # the paper's E_m(p, j)
    assert absolute.decoder.net[0].in_features == 6 + 3 + 30 and net.decoder.net[0].in_features == 6 + 3
    assert MotionConfig.from_dict(config.as_dict()) == config
    with pytest.raises(InputError, match="unknown key"):
        MotionConfig.from_dict({**config.as_dict(), "width": 3})


def test_normalization_uses_the_relative_statistics_for_relative_encoders():
    net = MotionNet(MotionConfig(num_kp=1, expression_dim=2, mouth_dim=2, hidden=4))
    motion_rows = np.array([[0.0] * 6, [2.0] * 6])  # mean 1, std 1
    residual = np.array([[0.0] * 6, [4.0] * 6])  # mean 2, std 2
    net.set_normalization(motion_rows, residual)
    assert torch.allclose(net.input_mean, torch.ones(6)) and torch.allclose(net.input_scale, torch.ones(6))
    assert torch.allclose(net.encoder_mean, torch.full((6,), 2.0))
    assert torch.allclose(net.encoder_scale, torch.full((6,), 2.0))
    assert torch.allclose(net.residual_scale, torch.full((6,), 2.0))
    # input (3,...) with neutral (1,...): relative 2 -> standardised (2 - 2) / 2 = 0
    x = net.encoder_input(torch.full((1, 1, 2), 3.0), torch.full((1, 1, 2, 2), 3.0), torch.ones(1, 1, 2),
                          torch.ones(1, 1, 2, 2))
    assert torch.allclose(x, torch.zeros(1, 6))


# ----------------------------------------------------------------------------------------------- stages


@pytest.fixture(scope="module")
def trained(motion_inputs, tmp_path_factory):  # noqa: F811
    """train_motion (6 steps, filtered quadruples), decompose and motion_report through the stage workers."""
    from pipeline.motion.decompose import build_motion_store
    from pipeline.motion.report import run_motion_report
    from pipeline.motion.train import run_train_motion

    out = tmp_path_factory.mktemp("motion")
    p = tiny_section("train_motion", use_filter=True)
    with torch_threads(1):
        summary = run_train_motion(motion_inputs["keypoints"], motion_inputs["pseudo"], out / "motion.pt",
                                   out / "losses.csv", BASE, p)
        build_motion_store(motion_inputs["keypoints"], out / "motion.pt", motion_inputs["corpus"],
                           out / "motion.zarr", BASE, tiny_section("decompose"))
        report = run_motion_report(out / "motion.pt", motion_inputs["keypoints"], out / "motion.zarr",
                                   motion_inputs["corpus"], motion_inputs["pseudo"], out / "motion.json",
                                   tiny_section("motion_report"))
    return {"out": out, "summary": summary, "report": report, **motion_inputs}


def test_quadruple_rows_follow_the_alignment_lists(motion_inputs):  # noqa: F811
    bank = KeypointBank(motion_inputs["keypoints"])
    pairs = pd.read_parquet(motion_inputs["pseudo"] / "pairs.parquet")
    quads = QuadrupleFrames.build(pairs, bank)
    q, t = np.array([3, 3, 10]), np.array([0, 5, 7])
    rows = quads.rows(q, t, t + 1)
    for k in range(3):
        pair = pairs.iloc[q[k]]
        assert rows["x_ia"][k] == bank.span(pair.x_ia)[0] + pair.y_ib_from_x_ia[t[k]]
        assert rows["x_jb_m"][k] == bank.span(pair.x_jb)[0] + pair.y_ib_from_x_jb[t[k]]
        assert rows["y_ib"][k] == bank.span(pair.y_ib)[0] + t[k]
        assert rows["x_jb"][k] == bank.span(pair.x_jb)[0] + pair.y_ja_from_x_jb[t[k] + 1]
        assert rows["x_ia_m"][k] == bank.span(pair.x_ia)[0] + pair.y_ja_from_x_ia[t[k] + 1]
        assert rows["y_ja"][k] == bank.span(pair.y_ja)[0] + t[k] + 1
    sampled, actor, weight = quads.sample(np.random.default_rng(0), 500)
    assert all(len(v) == 500 for v in sampled.values())
    assert all((w == 1).all() for w in weight.values())  # built without label weights: every label counts
    assert (sampled["y_ib"] < bank.value.shape[0]).all() and set(actor) <= {0, 1}  # the two training actors


def test_use_filter_changes_the_training_set(motion_inputs):  # noqa: F811
    pairs = pd.read_parquet(motion_inputs["pseudo"] / "pairs.parquet")
    sync = pd.read_parquet(motion_inputs["pseudo"] / "sync.parquet")
    kept = set(sync.pseudo_clip_id[sync.kept])
    filtered = select_quadruples(pairs, sync, use_filter=True)
    assert len(pairs) == 32 and 0 < len(filtered) < len(pairs)
    assert filtered.y_ib.isin(kept).all() and filtered.y_ja.isin(kept).all()
    assert len(select_quadruples(pairs, sync, use_filter=False)) == 32
    unseen, description = evaluation_quadruples(pairs, sync, trained_with_filter=True)
    assert len(unseen) == len(pairs) - len(filtered) and "not trained on" in description
    assert len(evaluation_quadruples(pairs, sync, trained_with_filter=False)[0]) == 32


def test_train_motion_writes_checkpoint_and_loss_curves(trained):
    out, summary = trained["out"], trained["summary"]
    net = load_motion(out / "motion.pt")
    assert net.step == 6 and not net.training
    assert net.config == MotionConfig(num_kp=5, expression_dim=8, mouth_dim=4, hidden=32, layers=2)
    pairs = pd.read_parquet(trained["pseudo"] / "pairs.parquet")
    filtered = select_quadruples(pairs, pd.read_parquet(trained["pseudo"] / "sync.parquet"), True)
    assert summary["quadruples"] == len(filtered) < summary["quadruples_all"] == 32
    assert summary["train_params"]["use_filter"] is True
    rows = read_loss_csv(out / "losses.csv")
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert set(rows[0]) == {"step", "total", "rec", "self", "e_con", "m_con", "m_center"}
    assert all(math.isfinite(r["total"]) and r["total"] > 0 for r in rows)


def test_training_is_seeded_resumes_and_learns(trained, tmp_path):
    from pipeline.motion.train import run_train_motion

    kp, pseudo = trained["keypoints"], trained["pseudo"]
    p = tiny_section("train_motion", use_filter=True)
    run_train_motion(kp, pseudo, tmp_path / "a.pt", tmp_path / "a.csv", BASE, p)
    first = load_motion(trained["out"] / "motion.pt").state_dict()
    again = load_motion(tmp_path / "a.pt").state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)

    run_train_motion(kp, pseudo, tmp_path / "r.pt", tmp_path / "r.csv", BASE,
                     with_field(p, steps=4))
    run_train_motion(kp, pseudo, tmp_path / "r.pt", tmp_path / "r.csv", BASE,
                     with_field(p, steps=6, resume=True))
    resumed = load_motion(tmp_path / "r.pt")
    assert resumed.step == 6 and [r["step"] for r in read_loss_csv(tmp_path / "r.csv")] == [2, 4, 6]
    assert all(torch.allclose(first[k], resumed.state_dict()[k], atol=1e-6) for k in first)

    longer = with_field(p, steps=150, log_every=50, lr=3e-3, batch_size=32)
    run_train_motion(kp, pseudo, tmp_path / "l.pt", tmp_path / "l.csv", BASE, longer)
    totals = [r["total"] for r in read_loss_csv(tmp_path / "l.csv")]
    assert totals[-1] < 0.8 * totals[0]


def test_train_motion_bad_inputs_fail_in_one_line(trained, tmp_path):
    from pipeline.motion.train import run_train_motion

    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    pd.read_parquet(trained["pseudo"] / "pairs.parquet").to_parquet(pseudo / "pairs.parquet")
    sync = pd.read_parquet(trained["pseudo"] / "sync.parquet")
    sync.assign(kept=False).to_parquet(pseudo / "sync.parquet")
    p = tiny_section("train_motion", use_filter=True)
    with pytest.raises(InputError, match="none of the 32 quadruples has both pseudo clips kept"):
        run_train_motion(trained["keypoints"], pseudo, tmp_path / "m.pt", tmp_path / "l.csv", BASE, p)
    # keypoints computed without the pseudo clips
    with pytest.raises(InputError, match="is not in the store"):
        _train_without_pseudo_keypoints(trained, tmp_path, p)
    with pytest.raises(InputError, match="every loss term is switched off"):
        run_train_motion(trained["keypoints"], trained["pseudo"], tmp_path / "m.pt", tmp_path / "l.csv",
                         BASE, with_field(p, use_rec=False, use_self=False, use_con=False))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_motion(tmp_path / "bad.pt")


def _train_without_pseudo_keypoints(trained, tmp_path, p):
    from pipeline.fomm.keypoints import build_keypoints
    from pipeline.motion.train import run_train_motion

    build_keypoints(trained["corpus"], trained["dir"] / "fomm.pt", tmp_path / "kp.zarr", BASE,
                    tiny_section("keypoints", extra_frames=()))
    run_train_motion(tmp_path / "kp.zarr", trained["pseudo"], tmp_path / "m.pt", tmp_path / "l.csv",
                     BASE, p)


def test_decompose_store_holds_every_corpus_frame(trained):
    out, corpus = trained["out"], trained["corpus"]
    store = zarr.open_group(out / "motion.zarr", mode="r")
    corpus_index = read_index(corpus / "frames.zarr")
    frames = int(corpus_index.stop.max())
    assert store["f_e"].shape == (frames, 8) and store["f_m"].shape == (frames, 4)
    assert store["f_e"].dtype == np.float32
    assert read_index(out / "motion.zarr").equals(corpus_index)  # pseudo clips are left out
    attrs = store.attrs.asdict()
    assert attrs["schema"] == "emmn.motion/v1" and attrs["stage"] == "decompose"
    assert attrs["model"]["step"] == 6 and attrs["model"]["train_params"]["use_filter"] is True
    assert attrs["params"]["decompose"]["task_frames"] == 256
    # row r = E_e / E_m of corpus frame r, relative to the clip's actor's neutral keypoints
    net = load_motion(out / "motion.pt")
    bank = KeypointBank(trained["keypoints"])
    manifest = pd.read_parquet(corpus / "manifest.parquet").set_index("clip_id")
    clip_id = corpus_index.clip_id[9]
    a = bank.actor(manifest.loc[clip_id, "actor"])
    kp = read_clip(trained["keypoints"], clip_id)
    f_e, f_m = encode_frames(net, kp["value"], kp["jacobian"], bank.reference_value[a], bank.reference_jacobian[a])
    stored = read_clip(out / "motion.zarr", clip_id)
    np.testing.assert_allclose(stored["f_e"], f_e, atol=1e-5)
    np.testing.assert_allclose(stored["f_m"], f_m, atol=1e-5)
    # decode(encode) of a frame is the model's self-reconstruction
    value, jacobian = decode_frames(net, f_e, f_m, bank.reference_value[a], bank.reference_jacobian[a])
    with torch.no_grad():
        direct = net(torch.from_numpy(kp["value"]), torch.from_numpy(kp["jacobian"]),
                     torch.from_numpy(bank.reference_value[[a]]), torch.from_numpy(bank.reference_jacobian[[a]]))
    np.testing.assert_allclose(value, direct[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(jacobian, direct[1].numpy(), atol=1e-5)


def test_report_has_the_issue_keys_and_exact_baselines(trained):
    report, out = trained["report"], trained["out"]
    assert json.loads((out / "motion.json").read_text()) == report
    for section, keys in REPORT_KEYS.items():
        for key in keys:
            assert isinstance(report[section][key], float), (section, key)
    assert isinstance(report["recon"]["cross_heldout"], float)
    # the pseudo clips ARE the counterfactual renders here: the label's own error is exactly 0
    assert report["recon"]["pseudo_label_vs_counterfactual"] == 0.0
    assert report["recon"]["cross"] == pytest.approx(report["recon"]["cross_vs_counterfactual"], rel=0.05)
    assert 0.0 <= report["probe"]["emotion_acc_from_fe"] <= 1.0
    test = pd.read_parquet(trained["corpus"] / "manifest.parquet").query("split == 'test' and kind == 'real'")
    probed = test.assign(rows=(test.frames + 1) // 2).groupby("emotion").rows.sum()  # stride 2
    assert report["probe"]["emotion_chance"] == pytest.approx(probed.max() / probed.sum(), abs=1e-6)
    assert report["probe"]["test_frames"] == probed.sum()
    assert "not trained on" in report["info"]["cross_set"]
    assert report["counts"]["heldout_frames"] > 0 and report["counts"]["cross_quadruples"] > 0
    assert report["model"]["use_filter"] is True and report["model"]["step"] == 6


def test_heldout_cross_pairs_each_emotion_with_the_neutral_clip_of_its_sentence(trained):
    bank = KeypointBank(trained["keypoints"])
    manifest = pd.read_parquet(trained["corpus"] / "manifest.parquet")
    targets, mouths, actors = heldout_cross_rows(bank, manifest, stride=1)
    test = manifest[(manifest.split == "test") & (manifest.kind == "real")]
    emotional = test[test.emotion != "neutral"]
    assert len(targets) == int(emotional.frames.sum())  # every frame of the 3 non-neutral held-out clips
    neutral = test[test.emotion == "neutral"].iloc[0]
    start, stop = bank.span(neutral.clip_id)
    assert ((mouths >= start) & (mouths < stop)).all()
    first = emotional.iloc[0]
    s0, s1 = bank.span(first.clip_id)
    t = (targets >= s0) & (targets < s1)
    expected = start + ((np.arange(s1 - s0) + 0.5) * (stop - start) / (s1 - s0)).astype(int)
    np.testing.assert_array_equal(mouths[t], np.minimum(expected, stop - 1))
    assert set(actors) == {bank.actor(first.actor)}


def test_ridge_classifier_probe_by_hand():
    rng = np.random.default_rng(0)
    groups = np.repeat(["a", "b", "c"], 40)
    labels = np.tile(np.repeat(["x", "y"], 20), 3)
    signal = np.where(labels == "x", -1.0, 1.0)[:, None]
    features = np.concatenate([signal + 0.1 * rng.normal(size=(120, 1)), rng.normal(size=(120, 3))], axis=1)
    acc, alpha = classifier_accuracy(features[:80], labels[:80], groups[:80], features[80:], labels[80:],
                                     (0.1, 1e6))
    assert acc == 1.0 and alpha == 0.1  # a huge penalty flattens the scores; CV picks the small one
    noise_acc, _ = classifier_accuracy(rng.normal(size=(80, 3)), labels[:80], groups[:80],
                                       rng.normal(size=(400, 3)), np.tile(["x", "y"], 200), (1.0,))
    assert 0.35 < noise_acc < 0.65


def test_dvc_wiring_lambda_changes_rerun_only_motion_and_later_stages():
    stages = expanded_stages()  # foreach stages as name@item
    using = [name for name, s in stages.items() if any(str(x).split(".")[0] == "train_motion"
                                                        for x in s.get("params", []))]
    assert using == ["train_motion", "table2"]  # no upstream stage reads train_motion's params (table2 retrains
    # the Table 2 ablations downstream; tests/test_table2.py)
    assert {"data/features/keypoints.zarr", "data/pseudo/pairs.parquet", "data/pseudo/sync.parquet"} <= set(
        stages["train_motion"]["deps"])
    for item in ("decompose@corpus", "decompose@wide"):
        assert {"data/models/motion.pt", "data/features/keypoints.zarr"} <= set(stages[item]["deps"])
    assert "data/pseudo/frames.zarr" in stages["keypoints"]["deps"]
    outs = {name: {next(iter(o)) if isinstance(o, dict) else o for o in s.get("outs", [])}
            for name, s in stages.items()}
    upstream = {"corpus", "wide_corpus", "audio_features@corpus", "audio_features@wide", "train_fomm", "keypoints", "train_syncnet", "train_sync_scorer",
                "train_wav2lip", "pseudo_pairs", "sync_filter"}
    motion_outputs = outs["train_motion"] | outs["decompose@corpus"] | outs["decompose@wide"]
    for name in upstream & set(stages):
        assert not motion_outputs & set(stages[name]["deps"]), name
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["keypoints"]["extra_frames"] == ["data/pseudo/frames.zarr", "data/wide/frames.zarr"]


def test_counterfactual_labels_swap_in_the_exact_renders(motion_inputs):  # noqa: F811
    from pipeline.motion.data import counterfactual_targets
    from pipeline.motion.train import training_quadruples

    bank = KeypointBank(motion_inputs["keypoints"])
    pairs = pd.read_parquet(motion_inputs["pseudo"] / "pairs.parquet")
    exact = counterfactual_targets(pairs, bank.has_clip)
    assert 0 < len(exact) <= len(pairs)
    swapped = exact.y_ib.str.contains("_cf") | exact.y_ja.str.contains("_cf")
    assert swapped.all()  # quadruples without any exact target are dropped
    first = exact[exact.y_ib.str.contains("_cf")].iloc[0]
    assert first.y_ib == f"{first.x_ia}_cf{first.sentence_b:03d}"
    # the fixture's pseudo clips ARE the counterfactual renders, so the swapped target holds the same keypoints
    source = pairs.set_index(["x_ia", "x_jb"]).loc[(first.x_ia, first.x_jb)]
    a, b = bank.span(first.y_ib), bank.span(source.y_ib)
    np.testing.assert_array_equal(bank.value[a[0]:a[1]], bank.value[b[0]:b[1]])
    only_ib = counterfactual_targets(pairs, lambda clip_id: clip_id == first.y_ib)
    # every quadruple whose y^{i,b} has that render (one per emotion j); the missing y^{j,a} renders keep the re-dubs
    assert len(only_ib) == (pairs.y_ib == source.y_ib).sum() and (only_ib.y_ib == first.y_ib).all()
    assert only_ib.y_ja.isin(pairs.y_ja).all()
    assert counterfactual_targets(pairs, lambda clip_id: False).empty
    p = with_field(tiny_section("train_motion"), labels="counterfactual", use_filter=True)
    chosen, weight = training_quadruples(pairs, None, p, "sync.parquet", bank)  # no sync table: all labels count
    assert len(chosen) == len(exact) and all((w == 1).all() for w in weight.values())
    # with a sync table that keeps nothing, only the exact renders count: the rejected re-dubs get weight 0
    sync = pd.DataFrame({"pseudo_clip_id": pd.concat([pairs.y_ib, pairs.y_ja]).unique()}).assign(kept=False)
    _, weight = training_quadruples(pairs, sync, p, "sync.parquet", bank)
    for target in ("y_ib", "y_ja"):
        np.testing.assert_array_equal(weight[target], exact[target].str.contains("_cf").to_numpy(np.float32))
    _, weight = training_quadruples(pairs, sync, with_field(p, use_filter=False), "sync.parquet", bank)
    assert all((w == 1).all() for w in weight.values())  # "w/o filter": the rejected re-dubs count again
    keep_all = sync.assign(kept=True)
    _, weight = training_quadruples(pairs, keep_all, with_field(p, labels="exact"), "sync.parquet", bank)
    for target in ("y_ib", "y_ja"):  # exact: even kept re-dubs weigh 0, only the renders count
        np.testing.assert_array_equal(weight[target], exact[target].str.contains("_cf").to_numpy(np.float32))
    quads = QuadrupleFrames.build(chosen, bank, {"y_ib": np.zeros(len(chosen)), "y_ja": np.ones(len(chosen))})
    _, _, sampled = quads.sample(np.random.default_rng(0), 16)
    assert (sampled["y_ib"] == 0).all() and (sampled["y_ja"] == 1).all()
    with pytest.raises(InputError, match="labels"):
        training_quadruples(pairs, None, with_field(p, labels="oracle"), "sync.parquet", bank)


def test_feature_norm_recalibration_makes_eval_mode_match_the_exact_statistics(motion_inputs):  # noqa: F811
    from pipeline.models.motion import MotionConfig
    from pipeline.motion.train import MotionTrainer, real_rows

    bank = KeypointBank(motion_inputs["keypoints"])
    pairs = pd.read_parquet(motion_inputs["pseudo"] / "pairs.parquet")
    quads = QuadrupleFrames.build(pairs, bank)
    p = with_field(tiny_section("train_motion"), batch_size=8)
    trainer = MotionTrainer(MotionConfig(num_kp=bank.num_kp), p, torch.device("cpu"), 3, bank, quads)
    norm = trainer.net.expression_encoder.norm
    norm.running_mean.fill_(5.0)  # stale statistics, as after a long run
    assert trainer.recalibrate_feature_norms(seed=3, batches=1) == 2
    assert norm.momentum == 0.1 and not trainer.net.training
    # one batch: the running mean is exactly that batch's mean of the pre-norm features of its real frames
    rows, actor, _ = quads.sample(np.random.default_rng([3, 7]), 8)
    idx = torch.from_numpy(np.concatenate([rows[r] for r in rows]))
    a = torch.from_numpy(np.tile(actor, len(rows)))
    with torch.no_grad():
        x = trainer.net.encoder_input(trainer.value[idx], trainer.jacobian[idx], trainer.ref_value[a],
                                      trainer.ref_jacobian[a])
        pre = trainer.net.expression_encoder.net(x)
    real = real_rows(list(rows), 8, torch.device("cpu"))
    assert int(real.sum()) == 4 * 8  # x_ia, x_jb_m, x_jb, x_ia_m; not the labels y_ib, y_ja
    torch.testing.assert_close(norm.running_mean, pre[real].mean(dim=0), rtol=1e-4, atol=1e-5)
