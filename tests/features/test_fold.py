"""BatchNorm folding: the folded backbone gives the unfolded one's features, and old checkpoints load."""

from unittest.mock import patch

import pytest
import torch
from torch import nn

from mvtec_ad.features.backbone import FeatureExtractor
from mvtec_ad.features.fold import fold_batchnorm

CASES = [("efficientnet_lite0", ["blocks.2", "blocks.4"]), ("resnet18", ["layer2", "layer3"])]


def unfolded_with_statistics(backbone: str, layers: list[str]) -> FeatureExtractor:
    """An unfolded extractor (random weights) whose BNs have non-trivial statistics, so folding can go wrong."""
    torch.manual_seed(0)
    with patch.object(FeatureExtractor, "_fold", lambda self: []):
        extractor = FeatureExtractor(backbone, layers, "none")
    generator = torch.Generator().manual_seed(1)
    for module in extractor.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    extractor.engine = "torch"  # the folding under test is torch's (onnxruntime folds on its own)
    return extractor


@pytest.mark.parametrize(("backbone", "layers"), CASES)
def test_folded_features_equal_the_unfolded_ones(backbone, layers):
    extractor = unfolded_with_statistics(backbone, layers)
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = extractor(images)
        extractor.folded = extractor._fold()
        after = extractor(images)
    assert len(extractor.folded) > 10
    assert not any(isinstance(m, nn.BatchNorm2d) for m in extractor.body.modules())
    for a, b in zip(after, before, strict=True):
        assert a.shape == b.shape
        assert float((a - b).abs().max() / b.abs().max()) < 1e-4


def test_extractors_are_built_folded():
    extractor = FeatureExtractor("efficientnet_lite0", ["blocks.2"], "none")
    assert extractor.folded
    keys = extractor.state_dict().keys()
    assert not any(key.endswith("running_var") for key in keys)
    assert not any(module.training for module in extractor.modules())  # replacements too
    conv, bn, _ = extractor.folded[0]
    assert f"body.{conv}.bias" in keys and f"body.{bn}.weight" not in keys


@pytest.mark.parametrize(("backbone", "layers"), CASES)
def test_an_unfolded_checkpoint_loads_into_a_folded_extractor(backbone, layers):
    old = unfolded_with_statistics(backbone, layers)  # as checkpoints were written before folding
    state = old.state_dict()
    assert any(key.endswith("running_var") for key in state)
    torch.manual_seed(5)  # other random weights: everything must come from the checkpoint
    new = FeatureExtractor(backbone, layers, "none")
    assert new.folded
    new.load_state_dict(state)  # strict: every key accounted for
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for a, b in zip(new(images), old(images), strict=True):
            assert float((a - b).abs().max() / b.abs().max()) < 1e-4


class ListedOutOfOrder(nn.Module):
    """A BN registered right after a conv it does not follow: the folding must be caught and undone."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.bn.running_mean.fill_(0.5)
        self.bn.running_var.fill_(4.0)

    def forward(self, x):
        return self.conv(self.bn(self.first(x)))  # BN before conv, though listed after it


def test_a_wrong_fold_is_seen_and_undone():
    module = ListedOutOfOrder().eval()
    image = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        before = module(image)
        pairs, undo = fold_batchnorm(module)
        assert pairs == [("conv", "bn", 1e-5)]
        assert not torch.allclose(module(image), before, atol=1e-3)  # folded wrongly, as expected
        undo()
        assert isinstance(module.bn, nn.BatchNorm2d)
        assert torch.equal(module(image), before)
