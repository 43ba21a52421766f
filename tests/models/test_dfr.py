"""DFR's pure model: d from PCA, the output contract."""

import pytest
import torch

from mvtec_ad.models.dfr import DFRModel, latent_dim_from_pca


def test_latent_dim_from_pca():
    cov = torch.diag(torch.tensor([5.0, 3.0, 1.0, 1.0], dtype=torch.float64))
    assert latent_dim_from_pca(cov, 0.95) == 4
    assert latent_dim_from_pca(cov, 0.8) == 2
    assert latent_dim_from_pca(cov, 0.5) == 1


def test_dfr_model_output_contract():
    model = DFRModel("efficientnet_lite0", ["blocks.2", "blocks.4"], weights="none", image_size=64).eval()
    model.build_autoencoder(8)
    out = model(torch.rand(3, 3, 64, 64))
    assert out.score.shape == (3,)
    assert out.map.shape == (3, 1, 64, 64)
    assert (out.map >= 0).all()
    with pytest.raises(RuntimeError, match="not built"):
        DFRModel("efficientnet_lite0", ["blocks.2"], weights="none", image_size=64)(torch.rand(1, 3, 64, 64))
