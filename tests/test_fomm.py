"""FOMM: official layout (strict import), official outputs (golden files), relative motion transfer.

Golden files (tests/golden/):
* fomm_vox256_spec.npz: every official state-dict name/shape/dtype and constructor kwargs
  (from checkpoint-specs/fomm_vox256.json).
* fomm_tiny.npz, fomm_vox256.npz: outputs of the OFFICIAL first-order-model code (modules/*.py and
  animate.normalize_kp at c027484, sync BN replaced by BatchNorm2d, eval mode, torch 2.13 CPU) for the
  weights of `seeded_state_dict` and the images of `seeded_images` below. The official code is not a
  test dependency: the recipes are regenerated here and the fingerprints guard them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.errors import CheckpointError, InputError
from pipeline.models.fomm import (
    DenseMotionConfig,
    DiscriminatorConfig,
    FommConfig,
    GeneratorConfig,
    ImagePyramid,
    KeypointFilm,
    KPDetector,
    KPDetectorConfig,
    MultiScaleDiscriminator,
    OcclusionAwareGenerator,
    apply_film,
    load_official_fomm,
    load_official_fomm_discriminator,
)
from pipeline.models.motion_transfer import (
    convex_hull,
    convex_hull_area,
    relative_motion,
)

GOLDEN = Path(__file__).parent / "golden"
COMPONENTS = ("kp_detector", "generator", "discriminator")

# Every code path at a few ms per call: kp detector at x0.5 (5x5 anti-alias kernel), dense motion at
# x0.25 (13x13) on a grid smaller than the generator's features (so deformation and occlusion are
# resized), keypoint-conditioned two-scale discriminator.
TINY = FommConfig(
    image_size=64,
    num_kp=5,
    kp_detector=KPDetectorConfig(block_expansion=8, max_features=32, num_blocks=3, scale_factor=0.5),
    dense_motion=DenseMotionConfig(block_expansion=8, max_features=32, num_blocks=2, scale_factor=0.25),
    generator=GeneratorConfig(block_expansion=8, max_features=16, num_down_blocks=1, num_bottleneck_blocks=2),
    discriminator=DiscriminatorConfig(scales=(1, 0.5), block_expansion=8, max_features=32, num_blocks=3,
                                      use_kp=True),
)


# ------------------------------------------------------------------------------------------ recipes


def seeded_state_dict(template: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Deterministic, non-trivial weights for any FOMM state dict (official names), one RNG per name.

    He-scaled convs, BN/IN affine around (1, 0), running means ~0.1, variances in [0.5, 1.5], jacobian
    convs near the identity (so every jacobian is well conditioned); anti-alias kernels and
    `num_batches_tracked` are kept.
    """
    out = {}
    for name, ref in template.items():
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        randn = lambda: torch.randn(ref.shape, generator=gen)  # noqa: E731
        if name.endswith("num_batches_tracked") or name == "down.weight" or name.endswith(".down.weight"):
            value = ref.clone()
        elif name.endswith("running_mean"):
            value = 0.1 * randn()
        elif name.endswith("running_var"):
            value = 0.5 + torch.rand(ref.shape, generator=gen)
        elif name.endswith(("weight_u", "weight_v")):
            value = torch.nn.functional.normalize(randn(), dim=0)
        elif ".norm" in name:
            value = (1.0 if name.endswith("weight") else 0.0) + 0.1 * randn()
        elif name == "jacobian.weight":
            value = 0.05 * randn() * math.sqrt(2.0 / ref[0].numel())
        elif name == "jacobian.bias":
            value = torch.tensor([1.0, 0.0, 0.0, 1.0]).repeat(ref.numel() // 4) + 0.05 * randn()
        elif ref.dim() == 4:  # conv weight (or weight_orig)
            value = randn() * math.sqrt(2.0 / ref[0].numel())
        else:  # conv bias
            value = 0.05 * randn()
        out[name] = value.to(ref.dtype)
    return out


def seeded_images(seed: int, count: int, batch: int, size: int) -> list[torch.Tensor]:
    """`count` smooth RGB images [batch,3,size,size] in [0,1]: random 9x9 colours upsampled bilinearly."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, batch, 3, 9, 9, generator=gen)
    return [torch.nn.functional.interpolate(c, size=(size, size), mode="bilinear", align_corners=True)
            for c in coarse]


def fingerprint(state_dict: dict[str, torch.Tensor]) -> float:
    """Sum of |x| over every float entry, float64: detects a change of the weight recipe."""
    return float(sum(v.double().abs().sum() for v in state_dict.values() if v.is_floating_point()))


def seeded_modules(config: FommConfig, seed: int, with_discriminator: bool = False):
    modules = [KPDetector(config), OcclusionAwareGenerator(config)]
    if with_discriminator:
        modules.append(MultiScaleDiscriminator(config))
    for module in modules:
        module.load_state_dict(seeded_state_dict(module.state_dict(), seed))
        module.eval()
    return modules


def max_diff(ours: torch.Tensor, golden: np.ndarray) -> float:
    assert tuple(ours.shape) == golden.shape
    return float((ours.detach().double() - torch.from_numpy(golden).double()).abs().max())


# ------------------------------------------------------------------------------------ official layout


@pytest.fixture(scope="module")
def spec():
    return np.load(GOLDEN / "fomm_vox256_spec.npz")


def spec_entries(spec, component: str) -> list[tuple[str, tuple[int, ...], str]]:
    shapes = [tuple(int(d) for d in row if d >= 0) for row in spec[f"{component}_shapes"]]
    return list(zip(map(str, spec[f"{component}_names"]), shapes, map(str, spec[f"{component}_dtypes"])))


def test_vox256_state_dicts_equal_the_official_spec(spec):
    config = FommConfig.vox256()
    for component, module in zip(COMPONENTS, (KPDetector(config), OcclusionAwareGenerator(config),
                                              MultiScaleDiscriminator(config))):
        ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()]
        assert ours == spec_entries(spec, component), component
        assert sum(p.numel() for p in module.parameters()) == int(spec[f"{component}_num_parameters"])
    # 75 + 196 + 26 entries; 14,215,368 + 45,575,391 + 2,758,849 parameters.
    assert [len(spec[f"{c}_names"]) for c in COMPONENTS] == [75, 196, 26]


def test_vox256_config_is_the_official_yaml(spec):
    official = FommConfig.vox256().to_official()
    common = official["common_params"]
    expected = {
        "kp_detector": {**official["kp_detector_params"], **common},
        "generator": {**official["generator_params"], **common},
        "discriminator": {**official["discriminator_params"], **common},
    }
    for component in COMPONENTS:
        kwargs = json.loads(str(spec[f"{component}_constructor_kwargs"]))
        ours = expected[component]
        assert {k: ours[k] for k in kwargs if k != "dense_motion_params"} == {
            k: v for k, v in kwargs.items() if k != "dense_motion_params"}, component
    spec_dm = json.loads(str(spec["generator_constructor_kwargs"]))["dense_motion_params"]
    assert {k: expected["generator"]["dense_motion_params"][k] for k in spec_dm} == spec_dm
    assert FommConfig.from_official(official) == FommConfig.vox256()


def test_antialias_kernels_are_the_official_gaussian_buffers():
    config = FommConfig.vox256()
    kernel = KPDetector(config).state_dict()["down.weight"]
    assert tuple(kernel.shape) == (3, 1, 13, 13)
    assert torch.allclose(kernel.sum(dim=(2, 3)), torch.ones(3, 1), atol=1e-6)
    # sigma = (1/0.25 - 1)/2 = 1.5: neighbour/centre = exp(-1 / (2 * 1.5^2)).
    assert float(kernel[0, 0, 6, 7] / kernel[0, 0, 6, 6]) == pytest.approx(math.exp(-1 / 4.5), rel=1e-6)
    dense_down = OcclusionAwareGenerator(config).state_dict()["dense_motion_network.down.weight"]
    assert torch.equal(dense_down, kernel)


def test_config_round_trip_and_bad_configs():
    for config in (FommConfig.vox256(), FommConfig.slim(), TINY):
        assert FommConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert FommConfig.vox256().keypoint_map_size == 58 and FommConfig.vox256().motion_size == 64
    with pytest.raises(InputError, match="unknown FOMM config key 'generator.widht'"):
        FommConfig.from_dict({"generator": {"widht": 3}})
    with pytest.raises(InputError, match="not divisible"):
        FommConfig.from_dict({"image_size": 200})  # 200 * 0.25 = 50 is not a multiple of 2^5


# ----------------------------------------------------------------------------------- official import


def cheap_random(shape: tuple[int, ...], dtype: str, gen: torch.Generator) -> torch.Tensor:
    """A random tensor of `shape` whose storage is only sum(shape) values (element = base[sum of indices]).

    torch.save writes the storage, not the view, so a full vox-256 checkpoint is a few hundred KB
    instead of 240 MB; what is under test here is names, shapes and dtypes.
    """
    if dtype == "int64":
        return torch.tensor(1000, dtype=torch.int64).reshape(shape)
    base = torch.rand(max(1, sum(shape) - len(shape) + 1), generator=gen)
    return base.as_strided(shape, (1,) * len(shape))


def official_container(spec, *, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    container = {c: {name: cheap_random(shape, dtype, gen) for name, shape, dtype in spec_entries(spec, c)}
                 for c in COMPONENTS}
    adam = {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999), "eps": 1e-8, "weight_decay": 0,
                                           "amsgrad": False, "params": [0, 1]}]}
    container.update(optimizer_generator=adam, optimizer_discriminator=adam, optimizer_kp_detector=adam, epoch=99)
    return container


def save_legacy(obj, path: Path) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=False)  # released files predate the zip format
    return path


def test_official_checkpoint_loads_strictly(spec, tmp_path):
    container = official_container(spec)
    path = save_legacy(container, tmp_path / "vox-cpk.pth.tar")
    assert path.stat().st_size < 5_000_000
    kp_detector, generator = load_official_fomm(path)
    assert not kp_detector.training and not generator.training
    for module, name in ((kp_detector, "kp_detector"), (generator, "generator")):
        loaded = module.state_dict()
        assert len(loaded) == len(container[name])
        for key, value in container[name].items():
            assert torch.equal(loaded[key], value), key
    discriminator = load_official_fomm_discriminator(path)
    assert torch.equal(discriminator.state_dict()["discs.1.conv.weight_orig"],
                       container["discriminator"]["discs.1.conv.weight_orig"])


def test_official_checkpoint_variants_that_load(spec, tmp_path):
    container = official_container(spec)
    prefixed = dict(container, generator={"module." + k: v for k, v in container["generator"].items()})
    kp_detector, generator = load_official_fomm(save_legacy(prefixed, tmp_path / "prefixed.pth.tar"))
    assert torch.equal(generator.state_dict()["final.weight"], container["generator"]["final.weight"])

    # torch < 0.4.1 wrote no num_batches_tracked: the module keeps its own (0).
    old = {c: {k: v for k, v in container[c].items() if not k.endswith("num_batches_tracked")}
           for c in ("kp_detector", "generator")}
    assert len(old["kp_detector"]) == 75 - 10 and len(old["generator"]) == 196 - 27
    kp_detector, _ = load_official_fomm(save_legacy(old, tmp_path / "old.pth.tar"))
    assert torch.equal(kp_detector.state_dict()["kp.weight"], container["kp_detector"]["kp.weight"])
    assert int(kp_detector.state_dict()["predictor.encoder.down_blocks.0.norm.num_batches_tracked"]) == 0


def test_official_checkpoint_mismatches_name_the_key(spec, tmp_path):
    container = official_container(spec)
    renamed = dict(container, generator=dict(container["generator"]))
    renamed["generator"]["dense_motion_network.masks.weight"] = renamed["generator"].pop(
        "dense_motion_network.mask.weight")
    with pytest.raises(CheckpointError, match=r"\[generator\] missing key 'dense_motion_network.mask.weight'"):
        load_official_fomm(save_legacy(renamed, tmp_path / "renamed.pth.tar"))

    reshaped = dict(container, kp_detector=dict(container["kp_detector"], **{"kp.weight": torch.zeros(10, 35, 5, 5)}))
    with pytest.raises(CheckpointError, match=r"\[kp_detector\] key 'kp.weight' has shape \(10, 35, 5, 5\), "
                                              r"model expects \(10, 35, 7, 7\)"):
        load_official_fomm(save_legacy(reshaped, tmp_path / "reshaped.pth.tar"))

    extra = dict(container, kp_detector=dict(container["kp_detector"], **{"kp.scale": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match=r"\[kp_detector\] unexpected key 'kp.scale'"):
        load_official_fomm(save_legacy(extra, tmp_path / "extra.pth.tar"))

    no_generator = {"kp_detector": container["kp_detector"], "epoch": 3}
    with pytest.raises(CheckpointError, match="no 'generator' entry"):
        load_official_fomm(save_legacy(no_generator, tmp_path / "half.pth.tar"))

    tiny_file = save_legacy(official_container(spec), tmp_path / "vox.pth.tar")
    with pytest.raises(CheckpointError, match="missing key|has shape"):
        load_official_fomm(tiny_file, TINY)  # a vox-256 file is not a tiny model


# ----------------------------------------------------------------------------------- official outputs


def test_tiny_model_matches_official_outputs():
    golden = np.load(GOLDEN / "fomm_tiny.npz")
    config = FommConfig.from_dict(json.loads(str(golden["config"])))
    assert config == TINY
    kp_detector, generator, discriminator = seeded_modules(config, int(golden["weight_seed"]), True)
    for name, module in (("kp_detector", kp_detector), ("generator", generator), ("discriminator", discriminator)):
        assert fingerprint(module.state_dict()) == pytest.approx(float(golden[f"fingerprint_{name}"]), rel=1e-9)
    source, driving_initial, driving = seeded_images(int(golden["input_seed"]), 3, 2, config.image_size)
    assert max_diff(source, golden["source"]) == 0.0

    with torch.no_grad():
        kps = {name: kp_detector(image) for name, image in
               (("kp_source", source), ("kp_driving_initial", driving_initial), ("kp_driving", driving))}
        kp_norm = relative_motion(kps["kp_source"], kps["kp_driving"], kps["kp_driving_initial"],
                                  adapt_movement_scale=True)
        out = generator(source, kp_driving=kp_norm, kp_source=kps["kp_source"])
        disc = discriminator(ImagePyramid(config.discriminator.scales)(out["prediction"]), kp=kp_norm)

    diffs, scale_of = {}, {}
    for name, kp in {**kps, "kp_norm": kp_norm}.items():
        diffs[f"{name}_value"] = max_diff(kp["value"], golden[f"{name}_value"])
        diffs[f"{name}_jacobian"] = max_diff(kp["jacobian"], golden[f"{name}_jacobian"])
    for key in ("mask", "sparse_deformed", "occlusion_map", "deformed", "prediction"):
        diffs[key] = max_diff(out[key], golden[key])
    for scale in ("1", "0.5"):
        key = f"prediction_map_{scale}"
        diffs[key] = max_diff(disc[key], golden[key])
        scale_of[key] = float(np.abs(golden[key]).max())  # discriminator logits reach ~38: rounding scales with them
    # Keypoints are bit-exact on every CPU seen; the generator and discriminator outputs pass through ~20 more
    # float32 convolutions whose summation order depends on the CPU's kernels (4e-5 on an AMD EPYC, <1e-5 before;
    # on an AVX2-only EPYC the discriminator's largest logit, 37.9, is off by 5e-4: 1.3e-5 of its size).
    assert max(v for k, v in diffs.items() if k.startswith("kp_")) <= 1e-5, diffs
    assert all(v <= 1e-4 * max(1.0, scale_of.get(k, 1.0)) for k, v in diffs.items()), diffs
    # The case is not degenerate: keypoints spread, motion is not the identity, output not saturated.
    assert float(kps["kp_source"]["value"].std()) > 0.1
    assert float((out["deformed"] - source).abs().mean()) > 0.01
    assert 0.1 < float(out["prediction"].std()) and float(out["occlusion_map"].std()) > 0.01


def test_vox256_matches_official_outputs():
    golden = np.load(GOLDEN / "fomm_vox256.npz")
    config = FommConfig.vox256()
    kp_detector, generator = seeded_modules(config, int(golden["weight_seed"]))
    assert fingerprint(kp_detector.state_dict()) == pytest.approx(float(golden["fingerprint_kp_detector"]), rel=1e-9)
    assert fingerprint(generator.state_dict()) == pytest.approx(float(golden["fingerprint_generator"]), rel=1e-9)
    source, driving = seeded_images(int(golden["input_seed"]), 2, 1, 256)
    with torch.no_grad():
        kp_source, kp_driving = kp_detector(source), kp_detector(driving)
        out = generator(source, kp_driving=kp_driving, kp_source=kp_source)
    assert tuple(kp_source["heatmap"].shape) == (1, 10, 58, 58)
    diffs = {
        "kp_source_value": max_diff(kp_source["value"], golden["kp_source_value"]),
        "kp_source_jacobian": max_diff(kp_source["jacobian"], golden["kp_source_jacobian"]),
        "kp_driving_value": max_diff(kp_driving["value"], golden["kp_driving_value"]),
        "kp_driving_jacobian": max_diff(kp_driving["jacobian"], golden["kp_driving_jacobian"]),
        "mask": max_diff(out["mask"], golden["mask"]),
        "occlusion_map": max_diff(out["occlusion_map"], golden["occlusion_map"]),
        "prediction": max_diff(out["prediction"], golden["prediction"]),
    }
    assert max(diffs.values()) <= 1e-4, diffs


# ------------------------------------------------------------------------------------ module behaviour


def test_tiny_shapes_ranges_and_identity_jacobian_init():
    kp_detector, generator = KPDetector(TINY).eval(), OcclusionAwareGenerator(TINY).eval()
    (image,) = seeded_images(3, 1, 2, 64)
    with torch.no_grad():
        kp = kp_detector(image)
        out = generator(image, kp_driving=kp, kp_source=kp)
    assert tuple(kp["value"].shape) == (2, 5, 2) and tuple(kp["heatmap"].shape) == (2, 5, 26, 26)
    assert float(kp["value"].abs().max()) <= 1.0
    assert torch.allclose(kp["heatmap"].sum(dim=(2, 3)), torch.ones(2, 5), atol=1e-5)
    # Freshly built: jacobian conv weight 0, bias [1,0,0,1] -> identity for every keypoint.
    assert torch.allclose(kp["jacobian"], torch.eye(2).expand(2, 5, 2, 2), atol=1e-6)
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {"mask": (2, 6, 16, 16), "sparse_deformed": (2, 6, 3, 16, 16), "occlusion_map": (2, 1, 16, 16),
                      "deformation": (2, 16, 16, 2), "deformed": (2, 3, 64, 64), "prediction": (2, 3, 64, 64)}
    assert 0.0 <= float(out["prediction"].min()) and float(out["prediction"].max()) <= 1.0


def test_warped_source_skip_blends_by_the_gate_channel():
    """Not in FOMM (slim preset only): prediction = g * deformed + (1 - g) * sigmoid(rgb), g from `final`'s 4th
    channel. A saturated gate must give exactly the warped source, or exactly the decoder's image."""
    config = dataclasses.replace(TINY, generator=dataclasses.replace(TINY.generator, warped_source_skip=True))
    kp_detector, generator = KPDetector(config).eval(), OcclusionAwareGenerator(config).eval()
    assert generator.final.out_channels == 4 and OcclusionAwareGenerator(TINY).final.out_channels == 3
    assert FommConfig.slim().generator.warped_source_skip and not FommConfig.vox256().generator.warped_source_skip
    source, driving = seeded_images(8, 2, 1, 64)
    with torch.no_grad():
        kp_s, kp_d = kp_detector(source), kp_detector(driving)
        out = generator(source, kp_driving=kp_d, kp_source=kp_s)
        assert set(out) >= {"skip_gate", "deformed"} and tuple(out["skip_gate"].shape) == (1, 1, 64, 64)
        generator.final.bias[3] = 60.0  # gate -> 1: the source pixels the flow points at
        out = generator(source, kp_driving=kp_d, kp_source=kp_s)
        assert torch.allclose(out["prediction"], out["deformed"], atol=1e-6)
        generator.final.bias[3] = -60.0  # gate -> 0: the decoder alone, i.e. FOMM's output
        rgb = generator.final.weight[:3], generator.final.bias[:3]
        plain = OcclusionAwareGenerator(TINY).eval()
        state = {k: v for k, v in generator.state_dict().items() if not k.startswith("final.")}
        plain.load_state_dict({**state, "final.weight": rgb[0], "final.bias": rgb[1]})
        out = generator(source, kp_driving=kp_d, kp_source=kp_s)
        assert torch.allclose(out["prediction"], plain(source, kp_driving=kp_d, kp_source=kp_s)["prediction"],
                              atol=1e-6)


def test_apply_film_hand_computed():
    features = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.5]]]])  # [1, 2 channels, 1, 2]
    scale = torch.tensor([[[[0.5]], [[-1.0]]]])
    shift = torch.tensor([[[[1.0]], [[2.0]]]])
    # channel 0: x * 1.5 + 1; channel 1: x * 0 + 2
    assert torch.equal(apply_film(features, scale, shift), torch.tensor([[[[2.5, -2.0]], [[2.0, 2.0]]]]))


def generator_with_option_and_plain(new_prefix: str, **generator_changes):
    """Seeded E_k and a TINY generator with a non-FOMM option on, plus the plain TINY generator holding the same
    weights except the option's own (state-dict keys starting with `new_prefix`), all in eval mode."""
    config = dataclasses.replace(TINY, generator=dataclasses.replace(TINY.generator, **generator_changes))
    torch.manual_seed(0)
    kp_detector, generator = KPDetector(config).eval(), OcclusionAwareGenerator(config).eval()
    plain = OcclusionAwareGenerator(TINY).eval()
    plain.load_state_dict({k: v for k, v in generator.state_dict().items() if not k.startswith(new_prefix)})
    return kp_detector, generator, plain


def test_keypoint_film_starts_as_identity_and_then_reads_both_frames_keypoints():
    """Not in FOMM: an untrained FiLM leaves the generator exactly as without it (zero last layer); once trained,
    the output depends on the keypoints even where the flow and the warped source are the same."""
    assert FommConfig.vox256().generator.expression_film == 0 and FommConfig.slim().generator.expression_film == 0
    kp_detector, generator, plain = generator_with_option_and_plain("film.", expression_film=16)
    source, driving = seeded_images(8, 2, 1, 64)
    with torch.no_grad():
        kp_s, kp_d = kp_detector(source), kp_detector(driving)
        assert torch.equal(generator(source, kp_driving=kp_d, kp_source=kp_s)["prediction"],
                           plain(source, kp_driving=kp_d, kp_source=kp_s)["prediction"])
        film = generator.film
        assert isinstance(film, KeypointFilm) and film.mlp[0].in_features == 2 * TINY.num_kp * 6
        film.mlp[-1].weight.normal_(0, 0.1)
        changed = generator(source, kp_driving=kp_d, kp_source=kp_s)["prediction"]
        assert not torch.allclose(changed, plain(source, kp_driving=kp_d, kp_source=kp_s)["prediction"])
        # Jacobians are invisible to the flow's keypoint Gaussians but not to the FiLM.
        kp_d2 = {**kp_d, "jacobian": kp_d["jacobian"] * 1.0}
        kp_d2["jacobian"][0, 0] += 0.3
        modulations = film(kp_d2, kp_s)
        assert len(modulations) == TINY.generator.num_bottleneck_blocks
        assert not torch.allclose(modulations[0][0], film(kp_d, kp_s)[0][0])


def test_motion_features_start_as_identity_and_then_paint_where_keypoints_moved():
    """Not in FOMM: the dense-motion features reach the bottleneck through a zero 1x1 conv (identity at first);
    trained, the output changes, even with the flow (deformation) itself unchanged. TINY's flow is coarser than
    the bottleneck (16 vs 32 pixels): the features are resized."""
    assert not FommConfig.vox256().generator.motion_features and not FommConfig.slim().generator.motion_features
    kp_detector, generator, plain = generator_with_option_and_plain("motion_map.", motion_features=True)
    source, driving = seeded_images(9, 2, 1, 64)
    with torch.no_grad():
        kp_s, kp_d = kp_detector(source), kp_detector(driving)
        before = generator(source, kp_driving=kp_d, kp_source=kp_s)
        assert torch.equal(before["prediction"], plain(source, kp_driving=kp_d, kp_source=kp_s)["prediction"])
        assert generator.motion_map.in_channels == generator.dense_motion_network.hourglass.out_filters
        generator.motion_map.weight.normal_(0, 0.1)
        after = generator(source, kp_driving=kp_d, kp_source=kp_s)
        assert torch.equal(after["deformation"], before["deformation"])
        assert not torch.allclose(after["prediction"], before["prediction"])


def test_without_jacobian_occlusion_or_downsampling():
    config = FommConfig(image_size=32, num_kp=3, estimate_jacobian=False,
                        kp_detector=KPDetectorConfig(block_expansion=4, max_features=8, num_blocks=2, scale_factor=1),
                        dense_motion=DenseMotionConfig(block_expansion=4, max_features=8, num_blocks=2, scale_factor=1),
                        generator=GeneratorConfig(block_expansion=4, max_features=8, num_down_blocks=1,
                                                  num_bottleneck_blocks=1, estimate_occlusion_map=False))
    kp_detector, generator = seeded_modules(config, 2)
    keys = set(kp_detector.state_dict()) | set(generator.state_dict())
    assert not {"jacobian.weight", "down.weight", "dense_motion_network.occlusion.weight",
                "dense_motion_network.down.weight"} & keys
    source, driving = seeded_images(6, 2, 1, 32)
    with torch.no_grad():
        kp_s, kp_d = kp_detector(source), kp_detector(driving)
        out = generator(source, kp_driving=relative_motion(kp_s, kp_d, kp_s), kp_source=kp_s)
    assert "jacobian" not in kp_s and "occlusion_map" not in out
    assert tuple(kp_s["heatmap"].shape) == (1, 3, 26, 26) and tuple(out["mask"].shape) == (1, 4, 32, 32)
    assert tuple(out["prediction"].shape) == (1, 3, 32, 32)


def test_same_keypoints_give_the_identity_grid_sampled_without_align_corners():
    generator = OcclusionAwareGenerator(TINY).eval()
    generator.load_state_dict(seeded_state_dict(generator.state_dict(), 5))
    (image,) = seeded_images(4, 1, 1, 64)
    kp = {"value": torch.rand(1, 5, 2) * 1.6 - 0.8,
          "jacobian": torch.tensor([[1.2, 0.3], [-0.2, 0.9]]).expand(1, 5, 2, 2)}
    with torch.no_grad():
        out = generator(image, kp_driving=kp, kp_source=kp)
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="xy"), -1)
    assert float((out["deformation"][0] - grid).abs().max()) < 1e-5
    # Grid ends at -1/+1 are pixel edges with align_corners=False: the corner pixel is averaged with
    # three zero-padding samples (official code on torch >= 1.3); align_corners=True would copy it.
    assert torch.allclose(out["deformed"][0, :, 0, 0], 0.25 * image[0, :, 0, 0], atol=1e-5)


def test_bf16_autocast_keeps_keypoints_and_warps_in_float32():
    kp_detector, generator = seeded_modules(TINY, 7)
    source, driving = seeded_images(8, 2, 1, 64)
    with torch.no_grad():
        reference = generator(source, kp_driving=kp_detector(driving), kp_source=kp_detector(source))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            kp_s, kp_d = kp_detector(source), kp_detector(driving)
            out = generator(source, kp_driving=kp_d, kp_source=kp_s)
    assert kp_s["value"].dtype == torch.float32 and out["sparse_deformed"].dtype == torch.float32
    assert out["prediction"].dtype == torch.float32
    assert float((out["prediction"] - reference["prediction"]).abs().mean()) < 0.02


def test_discriminator_and_pyramid_shapes():
    discriminator = MultiScaleDiscriminator(TINY).eval()
    (image,) = seeded_images(9, 1, 2, 64)
    pyramid = ImagePyramid((1, 0.5))(image)
    assert {k: tuple(v.shape) for k, v in pyramid.items()} == {"prediction_1": (2, 3, 64, 64),
                                                               "prediction_0.5": (2, 3, 32, 32)}
    kp = {"value": torch.zeros(2, 5, 2)}
    out = discriminator(pyramid, kp=kp)
    assert tuple(out["prediction_map_1"].shape) == (2, 1, 10, 10)
    assert tuple(out["prediction_map_0.5"].shape) == (2, 1, 2, 2)
    assert [tuple(f.shape[1:]) for f in out["feature_maps_1"]] == [(16, 30, 30), (32, 13, 13), (32, 10, 10)]


# ------------------------------------------------------------------------------------ motion transfer


def kp_dict(value, jacobian=None) -> dict[str, torch.Tensor]:
    kp = {"value": torch.tensor(value, dtype=torch.float32).unsqueeze(0)}
    if jacobian is not None:
        kp["jacobian"] = torch.tensor(jacobian, dtype=torch.float32).expand(1, len(value), 2, 2)
    return kp


SQUARE = [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.0, 0.5]]  # area 0.25
SMALL_SQUARE = [[0.0, 0.0], [0.25, 0.0], [0.25, 0.25], [0.0, 0.25]]  # area 0.0625


def test_relative_motion_hand_computed_without_scale():
    source = kp_dict(SQUARE, [[1.0, 1.0], [0.0, 1.0]])
    initial = kp_dict(SMALL_SQUARE, [[1.0, 0.0], [0.0, 2.0]])
    driving = kp_dict([[x + 0.1, y - 0.05] for x, y in SMALL_SQUARE], [[2.0, 0.0], [0.0, 1.0]])
    kp = relative_motion(source, driving, initial)
    expected_value = torch.tensor(SQUARE) + torch.tensor([0.1, -0.05])
    assert torch.allclose(kp["value"][0], expected_value, atol=1e-7)
    # [[2,0],[0,1]] @ inv([[1,0],[0,2]]) = [[2,0],[0,0.5]]; @ [[1,1],[0,1]] = [[2,2],[0,0.5]].
    assert torch.allclose(kp["jacobian"][0, 0], torch.tensor([[2.0, 2.0], [0.0, 0.5]]), atol=1e-7)
    absolute = relative_motion(source, driving, initial, use_relative_movement=False)
    assert torch.equal(absolute["value"], driving["value"]) and torch.equal(absolute["jacobian"], driving["jacobian"])
    value_only = relative_motion(source, driving, initial, use_relative_jacobian=False)
    assert torch.equal(value_only["jacobian"], driving["jacobian"])


def test_relative_motion_hand_computed_with_adapted_scale():
    source = kp_dict(SQUARE + [[0.25, 0.25]], [[1.0, 0.0], [0.0, 1.0]])  # interior point: hull area still 0.25
    initial = kp_dict(SMALL_SQUARE + [[0.1, 0.1]], [[1.0, 0.0], [0.0, 1.0]])
    driving = kp_dict([[x + 0.1, y - 0.05] for x, y in SMALL_SQUARE + [[0.1, 0.1]]], [[1.0, 0.0], [0.0, 1.0]])
    # scale = sqrt(0.25) / sqrt(0.0625) = 2 -> displacement (0.2, -0.1).
    kp = relative_motion(source, driving, initial, adapt_movement_scale=True)
    assert torch.allclose(kp["value"][0], torch.tensor(SQUARE + [[0.25, 0.25]]) + torch.tensor([0.2, -0.1]), atol=1e-6)
    # Precomputed areas override the hulls: sqrt(9)/sqrt(1) = 3.
    kp = relative_motion(source, driving, initial, adapt_movement_scale=True, source_area=9.0, driving_area=1.0)
    assert torch.allclose(kp["value"][0, 0], torch.tensor([0.3, -0.15]), atol=1e-6)
    collinear = kp_dict([[0.0, 0.0], [0.1, 0.1], [0.3, 0.3]])
    with pytest.raises(InputError, match="collinear"):
        relative_motion(source, collinear, collinear, adapt_movement_scale=True)


def test_convex_hull_matches_scipy():
    from scipy.spatial import ConvexHull

    hull = convex_hull(np.array(SQUARE + [[0.25, 0.25], [0.25, 0.0], [0.5, 0.5]]))  # interior, edge, duplicate
    assert sorted(map(tuple, hull.tolist())) == sorted(map(tuple, SQUARE))
    assert convex_hull_area(np.array([[0, 0], [4, 0], [0, 3]])) == 6.0
    rng = np.random.default_rng(0)
    for n in (3, 5, 10, 68):
        for _ in range(5):
            points = rng.uniform(-1, 1, size=(n, 2))
            assert convex_hull_area(points) == pytest.approx(ConvexHull(points).volume, rel=1e-12)
