"""Autoencoder blocks shared by the feature autoencoders (DFR, the layer3 feature AE)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

HIDDEN = (400, 200)


def conv1x1_autoencoder(channels: int, latent_dim: int, hidden: Sequence[int] = HIDDEN) -> nn.Sequential:
    """1x1 conv encoder/decoder C-h1-h2-d-h2-h1-C; BN + ReLU after every layer but the bottleneck and output."""
    widths = [channels, *hidden, latent_dim, *reversed(hidden), channels]
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Conv2d(cin, cout, kernel_size=1))
        is_linear = i in (len(hidden), len(widths) - 2)  # bottleneck and output stay linear
        if not is_linear:
            layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def bottleneck_width(conv_weights: Sequence[torch.Tensor]) -> int:
    """d of a conv1x1_autoencoder from its conv weights in order: the middle conv's input width.

    Works on a built module and on a checkpoint's state dict alike.
    """
    return conv_weights[len(conv_weights) // 2].shape[1]
