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


# ---- a trusted pipeline of another shape is refused at load (issue 29, item 9) -------------------
def classical(**options):
    from mvtec_ad.models.classical import Classical

    return Classical(**{"estimator": "ocsvm", "features": "direct", "image_size": 64, **options})


def pipeline_of(steps, width: int = 40):
    from sklearn.pipeline import Pipeline

    return Pipeline(steps).fit(np.random.default_rng(0).random((30, width)))


def state_with(pipeline, **options) -> dict:
    """A fitted detector's state dict (built with `options`) whose stored pipeline is `pipeline`."""
    donor = classical(**options)
    donor.model.set_pipeline(pipeline)
    donor.fitted.fill_(True)
    return donor.state_dict()


def seed_steps(estimator: str = "ocsvm", scaler=None) -> list:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    params = grid_points(SEED_GRIDS[estimator])[0]
    return [
        ("scaler", scaler or StandardScaler()),
        ("pca", PCA(n_components=0.95, svd_solver="full")),
        ("estimator", make_estimator(estimator, params, 0, 30)),
    ]


def refusal(detector, state: dict) -> str:
    with pytest.raises(CheckpointError) as error:
        detector.load_state_dict(state)
    message = str(error.value)
    assert "\n" not in message and "it was not loaded" in message
    assert "Use a checkpoint written by this detector" in message and "--model options" in message
    assert detector.model.pipeline_skops.numel() == 0 and not bool(detector.fitted)  # nothing left to score
    return message


def test_a_pipeline_of_another_trusted_estimator_is_refused_at_load():
    message = refusal(classical(estimator="ocsvm"), state_with(pipeline_of(seed_steps("iforest"))))
    assert "is scaler (StandardScaler) -> pca (PCA) -> estimator (IsolationForest)" in message
    assert "expects scaler (StandardScaler) -> pca (PCA) -> estimator (OneClassSVM)" in message
    assert "--model.estimator ocsvm --model.scaler standard --model.pca_variance 0.95" in message


def test_a_pipeline_with_another_scaler_or_other_steps_is_refused_at_load():
    from sklearn.preprocessing import MinMaxScaler, StandardScaler
    from sklearn.svm import OneClassSVM

    swapped = state_with(pipeline_of(seed_steps("ocsvm", scaler=MinMaxScaler())))
    message = refusal(classical(), swapped)
    assert "is scaler (MinMaxScaler) -> pca (PCA) -> estimator (OneClassSVM)" in message
    assert "expects scaler (StandardScaler) -> pca (PCA)" in message

    renamed = state_with(pipeline_of([("scaler", StandardScaler()), ("svm", OneClassSVM())]))
    message = refusal(classical(), renamed)
    assert "is scaler (StandardScaler) -> svm (OneClassSVM), but this detector expects" in message
    message = refusal(classical(pca_variance=None), swapped)  # no PCA configured, one in the checkpoint
    assert "expects scaler (StandardScaler) -> estimator (OneClassSVM)" in message
    assert "--model.pca_variance null" in message


def test_a_pipeline_fitted_on_features_of_another_width_is_refused_at_load():
    message = refusal(classical(), state_with(pipeline_of(seed_steps(), width=12)))
    assert "its step scaler (StandardScaler) fitted on 12 features" in message
    assert "but this detector's direct features have 40" in message

    raw = {"raw_pixels": True, "image_size": [16, 24]}
    message = refusal(classical(**raw), state_with(pipeline_of(seed_steps()), **raw))
    assert (
        f"fitted on 40 features, but this detector's direct features with raw pixels have {40 + 3 * 16 * 24}"
        in (message)
    )

    inner = pipeline_of(seed_steps())
    inner.steps[1] = ("pca", pipeline_of(seed_steps(), width=12).steps[1][1])  # a PCA of another pipeline
    message = refusal(classical(), state_with(inner))
    assert "its step pca (PCA) fitted on 12 features, but its step scaler gives 40" in message


def test_a_pipeline_with_an_unfitted_step_is_refused_at_load():
    from sklearn.pipeline import Pipeline

    fitted = pipeline_of(seed_steps()).steps
    unfitted = Pipeline([*fitted[:2], ("estimator", make_estimator("ocsvm", {}, 0, 30))])
    message = refusal(classical(), state_with(unfitted))
    assert "holds an unfitted step estimator (OneClassSVM)" in message


@pytest.mark.parametrize("estimator", list(SEED_GRIDS))
def test_the_pipeline_each_estimator_fits_loads_and_scores(estimator):
    pipeline = pipeline_of(seed_steps(estimator))
    detector = classical(estimator=estimator)
    detector.load_state_dict(state_with(pipeline))
    assert detector.model.pipeline is not None and bool(detector.fitted)
    x = detector.model.embed(IMAGES[:2]).double().numpy()
    np.testing.assert_array_equal(detector.model.pipeline.score_samples(x), pipeline.score_samples(x))


@pytest.mark.parametrize(
    "options",
    [
        {"features": "direct"},
        {"features": "direct", "raw_pixels": True, "image_size": [16, 24]},
        {"features": "direct", "raw_pixels": True, "image_size": [16, 24], "resize": "keep_aspect"},
        {
            "features": "deep",
            "backbone": "efficientnet_lite0",
            "layers": ["blocks.2", "blocks.4"],
            "weights": "none",
        },
    ],
)
def test_feature_width_is_the_width_embed_gives(options):
    model = ClassicalModel(**{"image_size": 64, **options})
    images = torch.rand(2, 3, *model.network_size)
    assert model.feature_width == model.embed(images).shape[1]


def test_a_checkpoint_whose_pipeline_is_another_estimators_is_one_line_in_the_cli(
    tiny_root, tmp_path, capsys
):
    import sys
    from unittest import mock

    from mvtec_ad.cli import main
    from tests.helpers import main_in_process, tiny_args

    options = ("--model.features", "direct", "--data.protocol", "test_split", "--trainer.logger", "false")
    main_in_process(["fit", *tiny_args("configs/demo/iforest.yaml", tiny_root, tmp_path / "fit", *options)])
    checkpoint = torch.load(tmp_path / "fit" / "checkpoints" / "model.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["estimator"] = "ocsvm"  # an IsolationForest pipeline under OC-SVM's name
    doctored = tmp_path / "doctored.ckpt"
    torch.save(checkpoint, doctored)
    capsys.readouterr()
    args = tiny_args(
        "configs/demo/ocsvm.yaml", tiny_root, tmp_path / "test", *options, "--ckpt_path", str(doctored)
    )
    with mock.patch.object(sys, "argv", ["mvtec_ad"]), pytest.raises(SystemExit) as exit_info:
        main(["test", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: The classical detector's pipeline in this checkpoint is ")
    assert (
        "estimator (IsolationForest), but this detector expects" in line and "estimator (OneClassSVM)" in line
    )
