"""EmmnNet: variants, windowed inference, emotion override, gradients, the emmn.pt round trip."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.checkpoints import load_file
from pipeline.core.errors import CheckpointError, InputError
from pipeline.memory.train import Batch, stage1_terms
from pipeline.models.emmn import (
    EmmnConfig,
    EmmnNet,
    EmotionTable,
    frozen_entry,
    keypoint_displacement,
    load_emmn,
    save_emmn,
)
from pipeline.training.loop import torch_threads
from tests.memory_fixtures import (
    NUM_KP,
    save_audio,
    save_motion,
    tiny_audio,
    tiny_motion,
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


def make_config(variant: str = "emmn", **changes) -> EmmnConfig:
    values = dict(variant=variant, num_kp=NUM_KP, content_dim=8, emotion_dim=6,
                  mouth_dim=4 if variant == "emmn" else 5, expression_dim=6, identity_dim=8, identity_size=16,
                  identity_channels=(4, 8), hidden=16, decoder_blocks=2, kernel=3, slots=4, window=5,
                  emotions=("neutral", "happy"), levels=(1, 3))
    if variant == "mmn":
        values.update(upper_keypoints=(0, 2), expression_dim=12)
    if variant == "baseline":
        values.update(expression_dim=0)
    values.update(changes)
    return EmmnConfig(**values)


def make_net(variant: str = "emmn", seed: int = 0, **changes) -> EmmnNet:
    torch.manual_seed(seed)
    net = EmmnNet(make_config(variant, **changes), tiny_audio(), tiny_motion() if variant == "emmn" else None)
    e = net.config.emotion_dim
    net.emotion_table.fill(torch.stack([torch.zeros(e), torch.ones(e), 3 * torch.ones(e)]),
                           ["neutral", "happy", "happy"], [1, 1, 3])
    return net


def inputs(batch: int = 1, frames: int = 13, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, 32, 32, generator=g)
    mfcc = torch.randn(batch, frames, 28, 12, generator=g)
    value_neu = torch.rand(batch, NUM_KP, 2, generator=g) * 2 - 1
    jacobian_neu = torch.eye(2).expand(batch, NUM_KP, 2, 2) + 0.1 * torch.randn(batch, NUM_KP, 2, 2, generator=g)
    return image, mfcc, value_neu, jacobian_neu


def test_config_round_trip_and_validation():
    config = make_config("mmn")
    assert EmmnConfig.from_dict(config.to_dict()) == config
    assert config.context == 2  # 2 blocks x (3 // 2)
    with pytest.raises(InputError, match="variant must be one of"):
        make_config("eamm")
    with pytest.raises(InputError, match="6 x len"):
        make_config("mmn", expression_dim=7)
    with pytest.raises(InputError, match="unknown EMMN config"):
        EmmnConfig.from_dict({**config.to_dict(), "slot": 3})


@pytest.mark.parametrize("variant,emotion", [("emmn", None), ("mmn", None), ("baseline", None), ("emmn", "happy")])
def test_predict_in_windows_equals_one_pass(variant, emotion):
    """D_m's context is added on both sides of every window, and e_e is pooled at config.window whatever the
    compute window: windowing changes nothing."""
    net = make_net(variant).eval()
    args = inputs(batch=2, frames=13)
    small = net.predict(*args, emotion=emotion, window=3)
    whole = net.predict(*args, emotion=emotion, window=64)
    assert small["value"].shape == (2, 13, NUM_KP, 2) and small["jacobian"].shape == (2, 13, NUM_KP, 2, 2)
    for key in ("value", "jacobian", "mouth", "emotion", "expression", "slot_weights"):
        if whole[key] is None:
            assert variant == "baseline" and key in ("expression", "slot_weights")
            continue
        assert torch.allclose(small[key], whole[key], atol=1e-5), key
    if variant != "baseline":
        assert small["slot_weights"].shape == (2, 13, 4)
        assert torch.allclose(small["slot_weights"].sum(-1), torch.ones(2, 13))


def test_read_temperature_sharpens_the_inference_address_only():
    """predict addresses M_em at read_temperature: the same logits (cosines) divided by the smaller tau, so
    log-weights scale by tau / read_tau up to the softmax normaliser; training (forward) keeps tau."""
    trained = make_net("emmn")
    sharp = make_net("emmn", read_temperature=0.025)  # tau 0.1 / 4
    sharp.load_state_dict(trained.state_dict())
    args = inputs(frames=7)
    base, read = trained.predict(*args), sharp.predict(*args)
    logits = base["slot_weights"].log() * 4
    assert torch.allclose(read["slot_weights"], torch.softmax(logits, dim=-1), atol=1e-5)
    entropy = lambda w: -(w * w.clamp_min(1e-30).log()).sum(-1)  # noqa: E731
    assert bool((entropy(read["slot_weights"]) <= entropy(base["slot_weights"]) + 1e-6).all())
    assert torch.allclose(read["expression"], read["slot_weights"] @ sharp.memory.expression, atol=1e-5)
    image, mfcc, value_neu, jacobian_neu = args
    content, emotion = trained.encode_audio(mfcc)
    out_base = trained(image, content, emotion, value_neu, jacobian_neu)
    out_sharp = sharp(image, content, emotion, value_neu, jacobian_neu)
    assert torch.allclose(out_base.log_slot_weights, out_sharp.log_slot_weights)
    with pytest.raises(InputError, match="read_temperature"):
        make_config(read_temperature=0.0)


def test_encode_audio_matches_the_encoders_on_the_whole_clip():
    """Two equal windows: the length-weighted mean of their e_e is the mean-pooled e_e of the whole clip."""
    net = make_net("emmn", window=8)
    _, mfcc, _, _ = inputs(frames=16)
    content, emotion = net.encode_audio(mfcc)
    assert torch.allclose(emotion, net.audio.encode_emotion(mfcc), atol=1e-5)
    assert torch.allclose(content, net.audio.encode_content(mfcc), atol=1e-5)


def test_emotion_override_by_hand():
    """Table: neutral (level 1) = 0, happy level 1 = 1, happy level 3 = 3 -> happy at intensity 0.5 = 0 + 0.5 x 3."""
    net = make_net("emmn")
    assert net.emotions == ["neutral", "happy"]
    assert torch.allclose(net.emotion_embedding("happy", 0.5), torch.full((6,), 1.5))
    assert torch.allclose(net.emotion_embedding("happy", 0.0), torch.zeros(6))
    with pytest.raises(InputError, match="unknown emotion 'sad'; known: neutral, happy"):
        net.emotion_embedding("sad")
    with pytest.raises(InputError, match="intensity"):
        net.emotion_embedding("happy", 3.0)
    out = net.predict(*inputs(), emotion="happy", intensity=0.5)
    assert torch.allclose(out["emotion"], torch.full((1, 6), 1.5))


def test_emotion_table_without_neutral_uses_the_mean_of_all_clips():
    table = EmotionTable(make_config(emotions=("happy", "sad"), levels=(3,)))
    table.fill(torch.tensor([[2.0] * 6, [0.0] * 6, [4.0] * 6]), ["happy", "sad", "sad"], [3, 3, 3])
    # neutral stand-in: (1 x 2 + 2 x 2) / 3 = 2 (sad's mean is 2) -> happy at 1.0 is happy's mean 2
    assert torch.allclose(table.lookup("happy", 0.0), torch.full((6,), 2.0))


def test_override_steers_the_memory_query_only():
    """The emotion changes the slot address (Eq. 10) but not D_m's output f^_m: the mouth follows the content."""
    net = make_net("emmn")
    args = inputs()
    neutral = net.predict(*args, emotion="happy", intensity=0.0)
    happy = net.predict(*args, emotion="happy", intensity=1.0)
    assert torch.allclose(neutral["mouth"], happy["mouth"])
    assert not torch.allclose(neutral["slot_weights"], happy["slot_weights"])


def test_keypoint_displacement_and_mmn_placement_by_hand():
    value = torch.tensor([[[0.5, 0.5], [0.1, 0.2], [0.3, -0.4]]])
    jacobian = torch.eye(2).expand(1, 3, 2, 2) * 2
    value_neu = torch.tensor([[[0.5, 0.0], [0.0, 0.0], [0.3, 0.0]]])
    jacobian_neu = torch.eye(2).expand(1, 3, 2, 2)
    d = keypoint_displacement(value, jacobian, value_neu, jacobian_neu, (0, 2))
    assert torch.allclose(d, torch.tensor([[0.0, 0.5, 1, 0, 0, 1, 0.0, -0.4, 1, 0, 0, 1]]))
    net = make_net("mmn")  # upper keypoints (0, 2)
    head_v, head_j = torch.zeros(1, 1, NUM_KP, 2), torch.zeros(1, 1, NUM_KP, 2, 2)
    vn, jn = torch.ones(1, NUM_KP, 2), torch.ones(1, NUM_KP, 2, 2)
    disp = torch.arange(12.0).view(1, 1, 12)
    v, j = net._place_upper(disp, head_v, head_j, vn, jn)
    assert torch.allclose(v[0, 0, 0], torch.tensor([1.0, 2.0])) and torch.allclose(v[0, 0, 2], torch.tensor([7.0, 8.0]))
    assert torch.allclose(j[0, 0, 2], torch.tensor([[9.0, 10.0], [11.0, 12.0]]))
    assert torch.equal(v[0, 0, 1], torch.zeros(2))  # the head's keypoints are kept elsewhere


def make_batch(net: EmmnNet, frames: int = 6) -> Batch:
    image, mfcc, value_neu, jacobian_neu = inputs(batch=2, frames=frames)
    content, emotion = net.encode_audio(mfcc)
    g = torch.Generator().manual_seed(5)
    value = value_neu[:, None] + 0.1 * torch.randn(2, frames, NUM_KP, 2, generator=g)
    jacobian = jacobian_neu[:, None] + 0.1 * torch.randn(2, frames, NUM_KP, 2, 2, generator=g)
    f_e = f_m = None
    if net.motion is not None:
        f_e, f_m = net.motion.encode(value.flatten(0, 1), jacobian.flatten(0, 1),
                                     value_neu.repeat_interleave(frames, 0), jacobian_neu.repeat_interleave(frames, 0))
        f_e, f_m = f_e.view(2, frames, -1), f_m.view(2, frames, -1)
    return Batch(image, content, emotion, value, jacobian, value_neu, jacobian_neu, f_e, f_m)


@pytest.mark.parametrize("variant,terms", [("emmn", {"a2m", "exp_mem", "align", "pj"}),
                                           ("mmn", {"exp_mem", "align", "pj"}), ("baseline", {"pj"})])
def test_stage1_gradients_reach_trainable_parts_only(variant, terms):
    net = make_net(variant).train()
    batch = make_batch(net)
    out = net(batch.image, batch.content, batch.emotion, batch.value_neu, batch.jacobian_neu)
    losses = stage1_terms(net, out, batch)
    assert set(losses) == terms
    sum(losses.values()).backward()
    assert all(p.grad is None for p in net.audio.parameters())
    if net.motion is not None:
        assert all(p.grad is None for p in net.motion.parameters())
        assert not net.motion.training  # frozen parts stay in eval mode under net.train()
    for name, module in net.trainable_modules().items():
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name
    if net.memory is not None:  # L_p,j reaches both memories through Eq. 10 and 12
        net.zero_grad()
        out = net(batch.image, batch.content, batch.emotion, batch.value_neu, batch.jacobian_neu)
        stage1_terms(net, out, batch)["pj"].backward()
        assert net.memory.expression.grad.abs().sum() > 0 and net.memory.emo_mouth.grad.abs().sum() > 0


@pytest.mark.parametrize("a2m_only", [True, False])
def test_mouth_decoder_learns_from_l_a2m_alone_when_asked(a2m_only):
    """mouth_from_a2m_only: L_align, L_exp-mem and L_p,j read f^_m as a constant, so D_m gets no gradient from them."""
    net = make_net("emmn", mouth_from_a2m_only=a2m_only).train()
    batch = make_batch(net)
    out = net(batch.image, batch.content, batch.emotion, batch.value_neu, batch.jacobian_neu)
    terms = stage1_terms(net, out, batch)
    (terms["align"] + terms["exp_mem"] + terms["pj"]).backward(retain_graph=True)
    reached = [p.grad is not None and p.grad.abs().sum() > 0 for p in net.mouth_decoder.parameters()]
    assert not any(reached) if a2m_only else all(reached)
    net.zero_grad()
    terms["a2m"].backward()
    assert all(p.grad.abs().sum() > 0 for p in net.mouth_decoder.parameters())


def test_temporal_expression_moves_the_expression_within_a_clip_and_learns_from_its_residual_only():
    """D_t adds a per-frame residual to the memory's read: the expression varies over time even where the read
    cannot, the residual loss reaches D_t alone, and L_p,j reaches D_t through D_em."""
    net = make_net("emmn", temporal_expression=True).train()
    batch = make_batch(net, frames=8)
    out = net(batch.image, batch.content, batch.emotion, batch.value_neu, batch.jacobian_neu)
    assert out.read is not None and not torch.allclose(out.read, out.expression)
    residual = out.expression - out.read
    assert residual.std(dim=1).mean() > 0  # not one offset per clip
    terms = stage1_terms(net, out, batch)
    assert set(terms) == {"a2m", "exp_mem", "align", "pj", "expression"}
    terms["expression"].backward(retain_graph=True)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.expression_decoder.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.memory.parameters())
    net.zero_grad()
    terms["pj"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.expression_decoder.parameters())
    with pytest.raises(InputError, match="temporal_expression needs variant emmn"):
        make_config("mmn", temporal_expression=True)
    plain = make_net("emmn")
    assert plain.expression_decoder is None and "expression_decoder" not in plain.trainable_modules()


def test_a_tuned_content_encoder_is_a_trainable_copy():
    """tune_content: e_c comes from a copy of E_c that L_a2m trains; the frozen audio encoders get nothing."""
    net = make_net("emmn", tune_content=True).train()
    assert "content_encoder" in net.trainable_modules() and net.content_encoder is not net.audio.con_encoder
    image, mfcc, value_neu, jacobian_neu = inputs(batch=2, frames=6)
    torch.testing.assert_close(net.content_features(mfcc), net.audio.encode_content(mfcc))  # starts as E_c
    out = net(image, net.content_features(mfcc), net.encode_emotion(mfcc), value_neu, jacobian_neu)
    out.mouth.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.content_encoder.parameters())
    assert all(p.grad is None for p in net.audio.parameters())
    with torch.no_grad():
        for p in net.content_encoder.parameters():
            p.add_(0.1)
    assert not torch.allclose(net.encode_content(mfcc), net.audio.encode_content(mfcc))  # inference reads the copy
    assert make_net("emmn").content_encoder is None


@pytest.mark.parametrize("variant", ["emmn", "mmn"])
def test_emmn_pt_round_trip_needs_only_itself(tmp_path, variant):
    net = make_net(variant, tune_content=True, **({"temporal_expression": True} if variant == "emmn" else {}))
    with torch.no_grad():  # a tuned E_c that differs from the embedded audio checkpoint's
        for p in net.content_encoder.parameters():
            p.add_(0.05)
    audio_pt = save_audio(net.audio, tmp_path / "audio.pt")
    frozen = {"audio": frozen_entry(load_file(audio_pt))}
    if variant == "emmn":
        frozen["motion"] = frozen_entry(load_file(save_motion(net.motion, tmp_path / "motion.pt")))
        (tmp_path / "motion.pt").unlink()
    audio_pt.unlink()
    save_emmn(tmp_path / "emmn.pt", net, step=7, metrics={"x": 1.0}, frozen=frozen)
    loaded = load_emmn(tmp_path / "emmn.pt")
    assert loaded.step == 7 and loaded.config == net.config and not loaded.training
    args = inputs(frames=9)
    a, b = net.predict(*args), loaded.predict(*args)
    assert torch.allclose(a["value"], b["value"]) and torch.allclose(a["jacobian"], b["jacobian"])
    assert loaded.emotions == net.emotions


def test_load_emmn_refuses_a_file_without_its_frozen_parts(tmp_path):
    net = make_net("emmn")
    save_emmn(tmp_path / "emmn.pt", net, step=0, metrics={}, frozen={})
    with pytest.raises(CheckpointError, match="embedded frozen"):
        load_emmn(tmp_path / "emmn.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_emmn(tmp_path / "missing.pt")
