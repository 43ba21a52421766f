"""kNN, PatchCore and the classical detectors as pure modules: shapes, fitting, checkpoint round trips, grid search."""

import numpy as np
import pytest
import torch

from mvtec_ad.models.classical import SEED_GRIDS, ClassicalModel, grid_points, select_by_cv
from mvtec_ad.models.memory_bank import KNNModel, PatchCoreModel
from tests.conftest import tiny_dfr_kwargs

torch.manual_seed(0)
IMAGES = torch.rand(6, 3, 64, 64)


@pytest.fixture(scope="module")
def patchcore() -> PatchCoreModel:
    model = PatchCoreModel(**tiny_dfr_kwargs(), coreset_ratio=0.25).eval()
    with torch.no_grad():
        model.fit(model.embed(IMAGES[:4]))
    return model


def test_patchcore_bank_is_the_coreset_share_of_all_patches(patchcore):
    patches = patchcore.embed(IMAGES[:4])
    total = patches.shape[0] * patches.shape[2] * patches.shape[3]
    assert patchcore.memory_bank.shape == (int(np.ceil(0.25 * total)), patches.shape[1])
    flat = patches.permute(0, 2, 3, 1).reshape(-1, patches.shape[1])
    # every bank row is one of the training patches
    exact = torch.cdist(patchcore.memory_bank, flat, compute_mode="donot_use_mm_for_euclid_dist")
    assert exact.amin(1).max() < 1e-4


def test_patchcore_output_contract_and_training_images_score_low(patchcore):
    with torch.no_grad():
        out = patchcore(IMAGES)
    assert out.score.shape == (6,) and out.map.shape == (6, 1, 64, 64)
    # the first picks of a 25% coreset cover the training images far better than unseen ones
    assert out.score[:4].max() < out.score[4:].min()
    with torch.no_grad():
        full = PatchCoreModel(**tiny_dfr_kwargs(), coreset_ratio=1.0).eval()
        full.fit(full.embed(IMAGES[:4]))
        assert full(IMAGES[:4]).score.abs().max() < 1e-2  # a full bank contains every training patch


def test_patchcore_checkpoint_resizes_the_bank_of_a_fresh_model(patchcore):
    fresh = PatchCoreModel(**tiny_dfr_kwargs()).eval()
    assert fresh.memory_bank.shape[0] == 0
    fresh.load_state_dict(patchcore.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(IMAGES).score, patchcore(IMAGES).score)
    with pytest.raises(RuntimeError, match="fit the detector first or load a checkpoint"):
        PatchCoreModel(**tiny_dfr_kwargs())(IMAGES[:1])


def test_patchcore_reweighting_only_lowers_the_max_score(patchcore):
    reweighted = PatchCoreModel(**tiny_dfr_kwargs(), reweight=True, num_neighbors=3).eval()
    reweighted.load_state_dict(patchcore.state_dict())
    with torch.no_grad():
        plain, weighted = patchcore(IMAGES).score, reweighted(IMAGES).score
    assert (weighted <= plain + 1e-6).all() and (weighted > 0).all()
    assert not torch.allclose(weighted, plain)


def test_patchcore_float16_bank_gives_nearly_the_same_scores(patchcore):
    half = PatchCoreModel(**tiny_dfr_kwargs(), bank_dtype="float16").eval()
    half.load_state_dict(patchcore.state_dict())
    assert half.memory_bank.dtype == torch.float32  # the checkpoint's dtype wins when loading
    half.memory_bank = patchcore.memory_bank.half()
    with torch.no_grad():
        assert torch.allclose(half(IMAGES).score, patchcore(IMAGES).score, rtol=1e-2)


def test_knn_score_is_mean_distance_to_k_nearest_training_images():
    model = KNNModel(**tiny_dfr_kwargs(), k=2).eval()
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
    fresh = KNNModel(**tiny_dfr_kwargs(), k=2).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(IMAGES).map, out.map)


def test_classical_pipeline_travels_in_the_state_dict():
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    model = ClassicalModel(features="direct")
    train = model.embed(IMAGES[:4])
    assert train.shape == (4, 40) and train.dtype == torch.float64
    model.set_pipeline(
        Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(gamma="scale"))]).fit(train)
    )
    out = model(IMAGES)
    assert out.score.shape == (6,) and out.map.shape == (6, 1, 64, 64)
    assert torch.equal(out.map[:, 0, 5, 7], out.score)  # the score spread over the image
    fresh = ClassicalModel(features="direct")
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh(IMAGES[:1])
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(IMAGES).score, out.score)


def test_grid_points_cover_the_seed_grid_in_order():
    points = grid_points(SEED_GRIDS["ocsvm"])
    assert len(points) == 1 * 3 * 2 * 2
    assert points[0] == {"nu": 0.001, "kernel": "rbf", "gamma": "scale", "degree": 2}
    assert len(grid_points(SEED_GRIDS["lof"])) == 32 and len(grid_points(SEED_GRIDS["iforest"])) == 16


def test_cv_selection_picks_the_parameters_that_separate_best():
    labels = np.array([0, 0, 0, 1, 1, 1])
    folds = [[0, 3], [1, 4], [2, 5]]
    scores = {
        "bad": np.array([3, 2, 1, 0, 0, 0]),  # inverted: AUROC 0
        "good": np.array([0, 0, 0, 1, 2, 3]),  # perfect in every fold
        "half": np.array([0, 0, 5, 1, 1, 1]),  # wrong in one fold of three
    }
    best, table = select_by_cv(lambda p: scores[p["name"]], [{"name": n} for n in scores], labels, folds)
    assert best["params"] == {"name": "good"} and best["cv_auroc"] == 1.0
    assert [row["cv_auroc"] for row in table] == pytest.approx([0.0, 1.0, 2 / 3])


def test_cv_selection_with_real_estimators_finds_the_kernel_width_of_a_ring():
    from sklearn.svm import OneClassSVM

    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, 200)
    train = np.stack([np.cos(angle), np.sin(angle)], 1) + rng.normal(0, 0.05, (200, 2))
    # validation: ring points (normal) and points at the centre; a wide RBF kernel (small gamma)
    # finds the centre at least as dense as the ring, only a narrow one (gamma 10) isolates it
    val_angle = rng.uniform(0, 2 * np.pi, 30)
    val = np.concatenate([np.stack([np.cos(val_angle), np.sin(val_angle)], 1), rng.normal(0, 0.1, (30, 2))])
    labels = np.array([0] * 30 + [1] * 30)
    folds = [list(range(i, 60, 3)) for i in range(3)]
    grid = grid_points({"kernel": ["rbf"], "nu": [0.1], "gamma": [0.1, 10.0, 1.0]})
    best, _ = select_by_cv(lambda p: -OneClassSVM(**p).fit(train).score_samples(val), grid, labels, folds)
    assert best["params"]["gamma"] == 10.0 and best["cv_auroc"] > 0.95
