"""Classical detectors: the fitted pipeline in the state dict, the seed's grids, CV selection."""

import numpy as np
import pytest
import torch

from mvtec_ad.errors import CheckpointError
from mvtec_ad.models.classical import SEED_GRIDS, ClassicalModel, grid_points, make_estimator, select_by_cv

torch.manual_seed(0)
IMAGES = torch.rand(6, 3, 64, 64)


def test_classical_pipeline_travels_in_the_state_dict():
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    model = ClassicalModel(features="direct", image_size=64)
    train = model.embed(IMAGES[:4])
    assert train.shape == (4, 40) and train.dtype == torch.float64
    model.set_pipeline(
        Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(gamma="scale"))]).fit(train)
    )
    out = model(IMAGES)
    assert out.score.shape == (6,) and out.map.shape == (6, 1, 64, 64)
    assert torch.equal(out.map[:, 0, 5, 7], out.score)  # the score spread over the image
    fresh = ClassicalModel(features="direct", image_size=64)
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


class Payload:
    """What a crafted checkpoint would carry: unpickling it runs os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def crafted_state(model: ClassicalModel, data: bytes) -> dict:
    state = model.state_dict()
    state["model.pipeline_skops" if "model.pipeline_skops" in state else "pipeline_skops"] = torch.frombuffer(
        bytearray(data), dtype=torch.uint8
    )
    return state


def test_a_pickled_payload_in_a_checkpoint_is_never_run(tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    model = ClassicalModel(features="direct", image_size=64)
    model.load_state_dict(crafted_state(model, pickle.dumps(Payload(marker))))
    with pytest.raises(CheckpointError, match="not a skops file"):
        model(IMAGES[:1])
    assert not marker.exists()


def test_a_skops_file_with_an_untrusted_type_is_refused(tmp_path):
    import skops.io

    marker = tmp_path / "pwned"
    model = ClassicalModel(features="direct", image_size=64)
    try:
        data = skops.io.dumps({"pipeline": Payload(marker)})
    except Exception:  # skops may refuse to write it at all: then nothing can be planted this way
        return
    model.load_state_dict(crafted_state(model, data))
    with pytest.raises(CheckpointError, match="not trusted"):
        model(IMAGES[:1])
    assert not marker.exists()


def test_every_seed_grid_pipeline_round_trips_through_skops():
    """Each estimator the seed's grids can fit is rebuilt from the stored bytes with the same scores."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler

    x = np.random.default_rng(0).random((40, 12))
    for name, grid in SEED_GRIDS.items():
        for params in grid_points(grid)[:4]:
            steps = [("scaler", MinMaxScaler()), ("pca", PCA(0.95, svd_solver="full"))]
            pipeline = Pipeline([*steps, ("estimator", make_estimator(name, params, 0, len(x)))]).fit(x)
            model = ClassicalModel(features="direct", image_size=64)
            model.set_pipeline(pipeline)
            fresh = ClassicalModel(features="direct", image_size=64)
            fresh.load_state_dict(model.state_dict())
            np.testing.assert_array_equal(fresh.pipeline.score_samples(x), pipeline.score_samples(x))


def test_classical_detectors_take_non_square_keep_aspect_input_and_refuse_tiling():
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    from mvtec_ad.errors import ConfigError

    model = ClassicalModel(features="direct", image_size=[32, 80], resize="keep_aspect")
    model.set_pipeline(
        Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(gamma="scale"))]).fit(
            model.embed(torch.rand(4, 3, 32, 80))
        )
    )
    out = model(torch.rand(3, 3, 50, 50), None)  # square images of another size: placed, then scored
    assert out.score.shape == (3,) and out.map.shape == (3, 1, 50, 50) and torch.isfinite(out.score).all()
    with pytest.raises(ConfigError, match="tiling does not apply"):
        ClassicalModel(features="direct", image_size=64, tile_size=32)
