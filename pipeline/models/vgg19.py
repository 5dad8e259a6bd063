"""VGG19 feature extractor for perceptual losses, in torchvision's layout, written with torch only.

No usable torchvision exists here (see environment.md), so the layout is rebuilt: `features` is the
37-module Sequential of torchvision's `vgg19` (config "E", no batch norm), so torchvision's weight file
(`vgg19-dcbb9e9d.pth`: `features.<i>.weight/bias` + `classifier.*`) loads strictly into it; the
classifier is not needed for features and is dropped. FOMM's perceptual loss reads relu1_1, relu2_1,
relu3_1, relu4_1 and relu5_1 (module indices 1, 6, 11, 20, 29) of ImageNet-normalised [0,1] images.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.core.checkpoints import extract_state_dict, load_file, load_strict
from pipeline.core.errors import CheckpointError

# Channels per conv, "M" = 2x2 max pool (torchvision cfg "E").
VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                512, 512, 512, 512, "M")
# Indices in `features` of the ReLUs FOMM taps, named by block and conv.
PERCEPTUAL_TAPS = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_features() -> nn.Sequential:
    """torchvision's `vgg19().features`: conv3x3(pad 1) + ReLU per entry, max pools between blocks."""
    layers: list[nn.Module] = []
    channels = 3
    for entry in VGG19_LAYOUT:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, entry, kernel_size=3, padding=1), nn.ReLU()]
            channels = entry
    return nn.Sequential(*layers)


class Vgg19Features(nn.Module):
    """[0,1] RGB images -> the five FOMM perceptual feature maps (relu1_1 ... relu5_1). Frozen."""

    def __init__(self):
        super().__init__()
        self.features = vgg19_features()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.last_tap = max(PERCEPTUAL_TAPS.values())

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        out = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        taps = set(PERCEPTUAL_TAPS.values())
        maps = []
        for index, layer in enumerate(self.features):
            out = layer(out)
            if index in taps:
                maps.append(out)
            if index == self.last_tap:  # the deeper layers feed only the classifier
                break
        return maps


def load_vgg19(path: str | Path) -> Vgg19Features:
    """Strictly load torchvision-format VGG19 weights (`features.*`; `classifier.*` ignored), eval mode."""
    state_dict = extract_state_dict(load_file(path), path)
    features = {k: v for k, v in state_dict.items() if k.startswith("features.")}
    if not features:
        raise CheckpointError(path, "no 'features.*' weights: not a torchvision VGG19 state dict")
    others = sorted(k for k in state_dict if not k.startswith(("features.", "classifier.")))
    if others:
        raise CheckpointError(path, f"unexpected key '{others[0]}' (a VGG19 file holds features.* and classifier.*)")
    model = Vgg19Features()
    load_strict(model, features, path)
    return model.eval()
