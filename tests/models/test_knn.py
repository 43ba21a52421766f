"""Image kNN's pure model: the score is the mean distance to the k nearest training images."""

import torch

from mvtec_ad.models.knn import KNNModel
from tests.helpers import tiny_dfr_kwargs

torch.manual_seed(0)
IMAGES = torch.rand(6, 3, 64, 64)


def test_knn_score_is_mean_distance_to_k_nearest_training_images():
    model = KNNModel(**tiny_dfr_kwargs(), k=2, image_size=64).eval()
    with torch.no_grad():
        pooled, patches = model.embed(IMAGES[:4])
        assert pooled.shape == (4, sum(model.extractor.channels))
        model.fit(pooled, patches)
        out = model(IMAGES)
        query, _ = model.embed(IMAGES[4:])
    expected = torch.cdist(query, pooled).topk(2, largest=False).values.mean(1)
    assert torch.allclose(out.score[4:], expected, rtol=1e-4)
    assert out.score[:4].max() < out.score[4:].min()  # the image itself is its nearest neighbour
    assert out.map.shape == (6, 1, 64, 64)
    fresh = KNNModel(**tiny_dfr_kwargs(), k=2, image_size=64).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(IMAGES).map, out.map)
