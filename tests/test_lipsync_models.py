"""Lip-sync models (Wav2Lip, SyncNet_color, SyncNet v2): official layout, strict import, official outputs,
tiny CPU configs and the input-preparation helpers.

Golden outputs (`tests/golden/*_official_outputs.npz`) were computed by the official modules
(Rudrabha/Wav2Lip models/, joonson/syncnet_python SyncNetModel.py, rebuilt outside this repo) with
the weights of `recipe_state_dict` and the inputs of `*_inputs` below; the npz files keep the seeds
and checksums of both, so a changed recipe fails loudly instead of comparing the wrong thing.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.errors import CheckpointError, InputError
from pipeline.models.syncnet_color import (
    SyncNetColor,
    SyncNetColorConfig,
    load_official_syncnet_color,
    syncnet_color_face_window,
)
from pipeline.models.syncnet_v2 import (
    SyncNetV2,
    SyncNetV2Config,
    load_official_syncnet_v2,
    syncnet_v2_video_window,
)
from pipeline.models.wav2lip import (
    Wav2Lip,
    Wav2LipConfig,
    load_official_wav2lip,
    wav2lip_face_input,
)

GOLDEN = Path(__file__).parent / "golden"
TOLERANCE = 1e-4  # max abs difference allowed against the official code

MODELS = {
    "wav2lip": (Wav2Lip, Wav2LipConfig, 36_298_035, 352),
    "syncnet_color": (SyncNetColor, SyncNetColorConfig, 16_435_072, 217),
    "syncnet_v2": (SyncNetV2, SyncNetV2Config, 13_631_616, 102),
}
LOADERS = {"wav2lip": load_official_wav2lip, "syncnet_color": load_official_syncnet_color,
           "syncnet_v2": load_official_syncnet_v2}


# ---------------------------------------------------------------- recipes shared with the golden files

def load_spec(model: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every official state-dict entry, in order (copied from checkpoint-specs)."""
    data = json.loads((GOLDEN / f"{model}_state_dict_spec.json").read_text())
    return [(name, tuple(shape), dtype) for name, shape, dtype in data["entries"]]


def recipe_state_dict(entries, seed: int, scaled_keys: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Seeded weights with non-trivial BN statistics; each tensor depends only on (seed, name, shape).

    conv/linear weights N(0, 1/fan_in) (fan_in = shape[1] * kernel size), biases N(0, 0.1^2),
    BN weight U(0.8, 1.2), running_mean N(0, 0.2^2), running_var U(0.5, 1.5), num_batches_tracked 1000.
    `scaled_keys` multiplies named tensors (SyncNet v2's first conv by 1/128 so 0..255 video stays O(1)).
    """
    scaled_keys = scaled_keys or {}
    state = {}
    for name, shape, dtype in entries:
        if dtype == "int64":
            state[name] = torch.tensor(1000, dtype=torch.int64)
            continue
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        if name.endswith("running_var"):
            value = 0.5 + torch.rand(shape, generator=gen)
        elif name.endswith("running_mean"):
            value = 0.2 * torch.randn(shape, generator=gen)
        elif name.endswith("weight") and len(shape) == 1:
            value = 0.8 + 0.4 * torch.rand(shape, generator=gen)
        elif name.endswith("bias"):
            value = 0.1 * torch.randn(shape, generator=gen)
        else:
            value = torch.randn(shape, generator=gen) / math.sqrt(shape[1] * math.prod(shape[2:]))
        state[name] = value * scaled_keys.get(name, 1.0)
    return state


def wav2lip_inputs(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    face = torch.rand(2, 6, 96, 96, generator=gen)
    face[:, :3, 48:] = 0  # masked lower half, as the generator sees it
    mel = 8 * torch.rand(2, 1, 80, 16, generator=gen) - 4  # normalised mel range [-4, 4]
    return {"mel": mel, "face": face}


def syncnet_color_inputs(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"mel": 8 * torch.rand(2, 1, 80, 16, generator=gen) - 4, "faces": torch.rand(2, 15, 48, 96, generator=gen)}


def syncnet_v2_inputs(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"mfcc": 5 * torch.randn(2, 1, 13, 20, generator=gen),
            "video": torch.randint(0, 256, (2, 3, 5, 224, 224), generator=gen).float()}


INPUTS = {"wav2lip": wav2lip_inputs, "syncnet_color": syncnet_color_inputs, "syncnet_v2": syncnet_v2_inputs}
SCALED_KEYS = {"syncnet_v2": {"netcnnlip.0.weight": 1 / 128}}


def checksums(tensors: dict[str, torch.Tensor]) -> np.ndarray:
    """(sum, sum of |x|) in float64 over all float tensors: proves a recipe regenerated the same values."""
    floats = [t.double() for t in tensors.values() if t.is_floating_point()]
    return np.array([sum(t.sum().item() for t in floats), sum(t.abs().sum().item() for t in floats)])


def save_official_file(path: Path, model: str, state: dict[str, torch.Tensor]) -> None:
    """Write `state` the way the released file holds it (see checkpoint-specs README, sections 3-5)."""
    if model == "syncnet_v2":  # bare state dict
        torch.save(state, path)
    else:  # training-script container, legacy pickle; the released generator has `module.` keys
        keys = {f"module.{k}" if model == "wav2lip" else k: v for k, v in state.items()}
        torch.save({"state_dict": keys, "optimizer": None, "global_step": 1, "global_epoch": 1}, path,
                   _use_new_zipfile_serialization=False)


def golden_case(model: str, tmp_path: Path):
    """Regenerate the golden weights and inputs, check their checksums, import them through the official loader."""
    golden = np.load(GOLDEN / f"{model}_official_outputs.npz")
    state = recipe_state_dict(load_spec(model), int(golden["weight_seed"]), SCALED_KEYS.get(model))
    np.testing.assert_allclose(checksums(state), golden["weight_checksums"], rtol=1e-9)
    inputs = INPUTS[model](int(golden["input_seed"]))
    np.testing.assert_allclose(checksums(inputs), golden["input_checksums"], rtol=1e-9)
    path = tmp_path / f"{model}.pth"
    save_official_file(path, model, state)
    return LOADERS[model](path), inputs, golden


def max_diff(ours: torch.Tensor, reference: np.ndarray) -> float:
    return float(np.abs(ours.detach().numpy() - reference).max())


# ---------------------------------------------------------------- official layout and outputs

@pytest.mark.parametrize("model", list(MODELS))
def test_official_config_has_exactly_the_spec_state_dict(model):
    cls, config_cls, n_params, n_keys = MODELS[model]
    with torch.device("meta"):
        net = cls(config_cls.official())
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in net.state_dict().items()]
    assert ours == load_spec(model)
    assert len(ours) == n_keys
    assert sum(p.numel() for p in net.parameters()) == n_params


def test_wav2lip_matches_official_outputs(tmp_path):
    net, inputs, golden = golden_case("wav2lip", tmp_path)
    assert not net.training
    with torch.no_grad():
        out = net(inputs["mel"], inputs["face"])
        # The two frames as one clip: [B=1, T=2] folded like the official 5-D call.
        seq = net(inputs["mel"].unsqueeze(0), inputs["face"].permute(1, 0, 2, 3).unsqueeze(0))
    assert out.shape == (2, 3, 96, 96) and seq.shape == (1, 3, 2, 96, 96)
    assert max_diff(out, golden["frames"]) <= TOLERANCE
    assert max_diff(seq[0].permute(1, 0, 2, 3), golden["frames"]) <= TOLERANCE
    assert 0.05 < float(golden["frames"].std()) and golden["frames"].min() > 0.01  # not a saturated sigmoid


def test_syncnet_color_matches_official_outputs(tmp_path):
    net, inputs, golden = golden_case("syncnet_color", tmp_path)
    with torch.no_grad():
        audio, face = net(inputs["mel"], inputs["faces"])
        score = net.sync_score(inputs["mel"], inputs["faces"])
    assert max_diff(audio, golden["audio_embedding"]) <= TOLERANCE
    assert max_diff(face, golden["face_embedding"]) <= TOLERANCE
    assert max_diff(score, golden["cosine"]) <= TOLERANCE
    np.testing.assert_allclose(audio.norm(dim=1).numpy(), 1.0, atol=1e-5)


def test_syncnet_v2_matches_official_outputs(tmp_path):
    net, inputs, golden = golden_case("syncnet_v2", tmp_path)
    with torch.no_grad():
        assert max_diff(net.forward_aud(inputs["mfcc"]), golden["aud"]) <= TOLERANCE
        assert max_diff(net.forward_lip(inputs["video"]), golden["lip"]) <= TOLERANCE
        assert max_diff(net.forward_lipfeat(inputs["video"]), golden["lipfeat"]) <= TOLERANCE
    assert float(np.abs(golden["lip"]).max()) > 0.5  # outputs carry signal, so the tolerance means something


# ---------------------------------------------------------------- strict import

@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("with_batch_counts", [True, False])
def test_syncnet_color_import_accepts_prefix_and_missing_batch_counts(tmp_path, prefix, with_batch_counts):
    state = recipe_state_dict(load_spec("syncnet_color"), seed=3)
    stored = {prefix + k: v for k, v in state.items() if with_batch_counts or not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": stored, "optimizer": None, "global_step": 5, "global_epoch": 1}, tmp_path / "e.pth")
    net = load_official_syncnet_color(tmp_path / "e.pth")
    loaded = net.state_dict()
    assert not net.training
    for key in ("face_encoder.0.conv_block.0.weight", "audio_encoder.13.conv_block.1.running_var"):
        assert torch.equal(loaded[key], state[key])


@pytest.mark.parametrize("model", ["wav2lip", "syncnet_v2"])
def test_import_without_batch_counts_and_prefix(tmp_path, model):
    state = recipe_state_dict(load_spec(model), seed=4)
    stored = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(stored, tmp_path / "bare.pth")
    loaded = LOADERS[model](tmp_path / "bare.pth").state_dict()
    first, last = next(iter(state)), [k for k in state if not k.endswith("num_batches_tracked")][-1]
    assert torch.equal(loaded[first], state[first]) and torch.equal(loaded[last], state[last])


def zeros_like_spec(model: str) -> dict[str, torch.Tensor]:
    """Spec-shaped tensors backed by one element each: tiny files for tests that only need the layout."""
    return {name: torch.zeros((), dtype=getattr(torch, dtype)).expand(shape) for name, shape, dtype in load_spec(model)}


@pytest.mark.parametrize(("given", "loader", "first_missing"), [
    ("syncnet_color", "wav2lip", "face_encoder_blocks.0.0.conv_block.0.weight"),
    ("syncnet_v2", "wav2lip", "face_encoder_blocks.0.0.conv_block.0.weight"),
    ("wav2lip", "syncnet_color", "face_encoder.0.conv_block.0.weight"),
    ("wav2lip", "syncnet_v2", "netcnnaud.0.weight"),
    ("syncnet_color", "syncnet_v2", "netcnnaud.0.weight"),
])
def test_wrong_model_file_names_first_missing_key(tmp_path, given, loader, first_missing):
    path = tmp_path / f"{given}.pth"
    torch.save({"state_dict": zeros_like_spec(given)}, path)
    with pytest.raises(CheckpointError) as info:
        LOADERS[loader](path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    assert f"missing key '{first_missing}'" in message


def test_mis_shaped_unexpected_and_missing_keys_are_named(tmp_path):
    good = zeros_like_spec("syncnet_v2")
    cases = {
        "shape": ({**good, "netfcaud.3.weight": torch.zeros(512, 512)},
                  "key 'netfcaud.3.weight' has shape (512, 512), model expects (1024, 512)"),
        "extra": ({**good, "netfcaud.4.weight": torch.zeros(3)}, "unexpected key 'netfcaud.4.weight'"),
        "missing": ({k: v for k, v in good.items() if k != "netcnnlip.19.running_var"},
                    "missing key 'netcnnlip.19.running_var' (expected shape (512,))"),
    }
    for name, (state, expected) in cases.items():
        torch.save(state, tmp_path / f"{name}.model")
        with pytest.raises(CheckpointError) as info:
            load_official_syncnet_v2(tmp_path / f"{name}.model")
        assert expected in str(info.value), name


def test_pickled_module_and_missing_file_are_refused(tmp_path):
    torch.save(SyncNetV2(SyncNetV2Config.scaled(1 / 16)), tmp_path / "module.model")
    with pytest.raises(CheckpointError, match="refused: needs pickled code"):
        load_official_syncnet_v2(tmp_path / "module.model")
    with pytest.raises(CheckpointError, match="not found"):
        load_official_wav2lip(tmp_path / "absent.pth")


# ---------------------------------------------------------------- smaller configs from the same classes

TINY = {"wav2lip": Wav2LipConfig.scaled(1 / 8), "syncnet_color": SyncNetColorConfig.scaled(1 / 8),
        "syncnet_v2": SyncNetV2Config.scaled(1 / 16)}


@pytest.mark.parametrize("model", list(MODELS))
def test_config_round_trip_and_official_width(model):
    cls, config_cls, n_params, _ = MODELS[model]
    tiny = TINY[model]
    assert config_cls.from_dict(json.loads(json.dumps(tiny.to_dict()))) == tiny
    assert config_cls.scaled(1.0) == config_cls.official()
    with pytest.raises(InputError, match="unknown fields \\['depth'\\]"):
        config_cls.from_dict({**tiny.to_dict(), "depth": 3})
    small = sum(p.numel() for p in cls(tiny).parameters())
    assert small < n_params / 50  # widths scale parameters roughly quadratically


def test_tiny_wav2lip_folds_time_like_per_frame_calls():
    torch.manual_seed(0)
    net = Wav2Lip(TINY["wav2lip"]).eval()
    mel, face = torch.randn(2, 3, 1, 80, 16), torch.rand(2, 6, 3, 96, 96)
    with torch.no_grad():
        seq = net(mel, face)
        frame = net(mel[:, 1], face[:, :, 1])
    assert seq.shape == (2, 3, 3, 96, 96)
    assert float((seq[:, :, 1] - frame).abs().max()) < 1e-6
    assert 0.0 <= float(seq.min()) and float(seq.max()) <= 1.0
    with pytest.raises(ValueError, match="needs mel"):
        net(mel[:, :2], face)


def test_tiny_models_train_and_give_normalised_embeddings():
    torch.manual_seed(0)
    gen, expert, scorer = Wav2Lip(TINY["wav2lip"]), SyncNetColor(TINY["syncnet_color"]), SyncNetV2(TINY["syncnet_v2"])
    mel = torch.randn(4, 1, 80, 16)
    out = gen(mel, torch.rand(4, 6, 96, 96))
    out.mean().backward()
    assert all(p.grad is not None for p in gen.parameters())
    audio, face = expert(mel, torch.rand(4, 15, 48, 96))
    assert audio.shape == face.shape == (4, 64)
    np.testing.assert_allclose(face.norm(dim=1).detach().numpy(), 1.0, atol=1e-5)
    scorer.eval()
    with torch.no_grad():
        aud, lip = scorer(torch.randn(2, 1, 13, 20), 255 * torch.rand(2, 3, 5, 224, 224))
    assert aud.shape == lip.shape == (2, 64)
    assert scorer.forward_lipfeat(torch.zeros(1, 3, 5, 224, 224)).shape == (1, 32)


# ---------------------------------------------------------------- input preparation

def test_wav2lip_face_input_masks_lower_half_of_target_only():
    frames = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    refs = 255 - frames
    out = wav2lip_face_input(frames, refs)
    assert out.shape == (2, 6, 4, 4) and out.dtype == np.float32
    # channel 0 is B (OpenCV order kept), rows 0-1 kept, rows 2-3 zeroed
    np.testing.assert_array_equal(out[1, 0, :2], frames[1, :2, :, 0] / np.float32(255))
    np.testing.assert_array_equal(out[:, :3, 2:], 0)
    np.testing.assert_array_equal(out[:, 3:], refs.transpose(0, 3, 1, 2) / np.float32(255))
    full = wav2lip_face_input(np.full((1, 96, 96, 3), 51, np.uint8), np.full((1, 96, 96, 3), 51, np.uint8))
    assert full[0, 2, 47, 0] == np.float32(0.2) and full[0, 2, 48, 0] == 0 and full[0, 5, 95, 95] == np.float32(0.2)
    with pytest.raises(InputError, match="uint8"):
        wav2lip_face_input(frames.astype(np.float32), refs)


def test_syncnet_color_window_stacks_lower_halves_frame_major():
    frames = np.zeros((5, 96, 96, 3), np.uint8)
    for f in range(5):
        for c in range(3):
            frames[f, 48:, :, c] = 10 * f + c + 1  # lower half coded by (frame, channel); upper half 0
    window = syncnet_color_face_window(frames)
    assert window.shape == (15, 48, 96) and window.dtype == np.float32
    expected = np.array([10 * f + c + 1 for f in range(5) for c in range(3)]) / 255.0
    np.testing.assert_allclose(window.mean(axis=(1, 2)), expected, rtol=0, atol=1e-7)
    assert window.min() > 0  # only the lower half was kept
    with pytest.raises(InputError, match="5 uint8"):
        syncnet_color_face_window(frames[:4])


def test_syncnet_v2_window_moves_frames_to_dim_one_without_scaling():
    frames = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    window = syncnet_v2_video_window(frames)
    assert window.shape == (3, 5, 6, 7) and window.dtype == np.float32
    assert window[2, 4, 5, 6] == frames[4, 5, 6, 2] and window[0, 1, 2, 3] == frames[1, 2, 3, 0]
    assert window.max() == frames.max() > 200  # raw 0..255, no normalisation
    with pytest.raises(InputError, match="5 uint8"):
        syncnet_v2_video_window(frames.astype(np.int16))
