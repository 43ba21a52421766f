"""The 1x1 conv autoencoder blocks: widths, linear ends, the bottleneck width."""

import torch

from mvtec_ad.models.components.autoencoder import bottleneck_width, conv1x1_autoencoder


def test_autoencoder_widths_and_linear_ends():
    ae = conv1x1_autoencoder(1536, 64)
    convs = [m for m in ae if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (1536, 400),
        (400, 200),
        (200, 64),
        (64, 200),
        (200, 400),
        (400, 1536),
    ]
    assert bottleneck_width([c.weight for c in convs]) == 64
    assert isinstance(ae[-1], torch.nn.Conv2d)  # output is linear: normalised features can be negative
    assert ae(torch.rand(2, 1536, 4, 4)).shape == (2, 1536, 4, 4)
