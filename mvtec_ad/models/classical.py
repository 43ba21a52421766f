"""Classical detectors (seed report 2): OC-SVM, IsolationForest, LOF, EllipticEnvelope on image features.

Features are `direct` (the seed appendix's handcrafted statistics, optionally with raw pixels) or
`deep` (pooled backbone layers: ResNet50 layer4 = the seed's 2048 "block 3" values, or
layer2 + layer3 = 1536). A scaler (standard or min-max) and a PCA keeping 95% of the variance are
fitted on the training features; the estimator's hyperparameters are chosen on the seed's grid by
cross-validation AUROC over the validation folds of the DataModule's protocol, never on test.
These detectors score whole images: their map is the score spread over the image, and their
pixel metrics are reported as null.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import skops.io
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from sklearn.covariance import EllipticEnvelope
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import OneClassSVM

from mvtec_ad.errors import CheckpointError, ConfigError
from mvtec_ad.evaluation.metrics import binary_auroc
from mvtec_ad.evaluation.thresholds import ThresholdConfig
from mvtec_ad.features.backbone import FeatureExtractor, global_pool
from mvtec_ad.features.handcrafted import FEATURE_NAMES, direct_features
from mvtec_ad.models.components.buffers import ResizableBuffers
from mvtec_ad.models.components.detector import AnomalyOutput, Detector
from mvtec_ad.models.components.fit_once import FitOnceModule
from mvtec_ad.progress import track

Estimator = Literal["ocsvm", "iforest", "lof", "elliptic"]

# The seed's hyperparameter grids (report 2, "Hyperparameter Grid").
SEED_GRIDS: dict[str, dict[str, list]] = {
    "ocsvm": {
        "nu": [0.001],
        "kernel": ["rbf", "linear", "poly"],
        "gamma": ["scale", "auto"],
        "degree": [2, 3],
    },
    "iforest": {
        "n_estimators": [100, 200, 300, 400],
        "contamination": [0.01],
        "max_samples": ["auto", 1.0],
        "max_features": [0.9, 1.0],
    },
    "lof": {
        "n_neighbors": [10, 20, 30, 50],
        "contamination": [0.01],
        "leaf_size": [20, 30, 50, 100],
        "metric": ["minkowski", "euclidean"],
    },
    "elliptic": {"contamination": [0.01], "support_fraction": [0.9, 1.0], "assume_centered": [True, False]},
}


# The scikit-learn class each --model.estimator fits (make_estimator builds it).
ESTIMATOR_CLASSES: dict[str, type] = {
    "ocsvm": OneClassSVM,
    "iforest": IsolationForest,
    "lof": LocalOutlierFactor,
    "elliptic": EllipticEnvelope,
}


def make_estimator(name: str, params: dict, random_state: int, n_train: int):
    """A scikit-learn novelty detector with `score_samples` (higher = more normal)."""
    if name == "ocsvm":
        return OneClassSVM(**params)
    if name == "iforest":
        return IsolationForest(**params, random_state=random_state)
    if name == "lof":
        params = {**params, "n_neighbors": min(params.get("n_neighbors", 20), max(n_train - 1, 1))}
        return LocalOutlierFactor(**params, novelty=True)
    if name == "elliptic":
        return EllipticEnvelope(**params, random_state=random_state)
    raise ConfigError(f"--model.estimator must be one of {', '.join(SEED_GRIDS)}, got '{name}'.")


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid, in the grid's order (the first is the seed's default)."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def select_by_cv(
    fit_score,
    params_list: list[dict],
    val_labels: np.ndarray,
    folds: Sequence[Sequence[int]],
    trainer=None,
) -> tuple[dict, list[dict]]:
    """Hyperparameters with the best mean AUROC over the validation folds; ties keep grid order.

    `fit_score(params)` returns anomaly scores of the validation images for a model fitted on
    the training features with `params`. Folds without both classes are left out. A progress bar
    (mvtec_ad.progress) counts the grid's points.
    """
    usable = [f for f in folds if len(set(val_labels[list(f)].tolist())) == 2]
    table = []
    for params in track(params_list, "Grid search", trainer=trainer):
        scores = torch.as_tensor(fit_score(params))
        labels = torch.as_tensor(val_labels)
        aurocs = [binary_auroc(scores[list(f)], labels[list(f)]) for f in usable]
        table.append(
            {"params": params, "cv_auroc": float(np.mean(aurocs)), "cv_auroc_std": float(np.std(aurocs))}
        )
    best = max(range(len(table)), key=lambda i: (table[i]["cv_auroc"], -i))
    return table[best], table


# What a fitted pipeline holds beyond the scikit-learn estimators skops trusts itself: plain data
# structures (trees, neighbour indices, distance metrics). Nothing here can run code when rebuilt.
TRUSTED_TYPES = (
    "sklearn.tree._tree.Tree",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.MinkowskiDistance64",
)


def load_pipeline(data: bytes) -> Pipeline:
    """A pipeline from its skops bytes, refusing any type outside skops' defaults and TRUSTED_TYPES."""
    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception as error:
        raise CheckpointError(
            f"The classical detector's pipeline in this checkpoint is not a skops file "
            f"({type(error).__name__}); it was not loaded. Use a checkpoint written by mvtec_ad."
        ) from None
    unknown = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unknown:
        raise CheckpointError(
            f"The classical detector's pipeline in this checkpoint holds types that are not trusted: "
            f"{', '.join(unknown)}; it was not loaded (no code from a checkpoint is ever run)."
        )
    pipeline = skops.io.loads(data, trusted=list(untrusted))
    if not isinstance(pipeline, Pipeline):
        raise CheckpointError(
            "The classical detector's state in this checkpoint is not a pipeline; it was not used."
        )
    return pipeline


def describe_steps(steps: Sequence[tuple[str, object]]) -> str:
    """'scaler (StandardScaler) -> estimator (OneClassSVM)': names and classes, of steps or of a layout."""
    return " -> ".join(
        f"{name} ({(step if isinstance(step, type) else type(step)).__name__})" for name, step in steps
    )


def check_pipeline(
    pipeline: Pipeline, layout: Sequence[tuple[str, type]], n_features: int, features: str, fix: str
) -> None:
    """Refuse, in one line, a pipeline other than the `layout` (step names and classes) fit_features writes.

    A trusted pipeline of another shape (another estimator, scaler or PCA choice, other step names,
    or fitted on features of another width than the `n_features` of the detector's `features`) would
    load and fail or mislead later; `fix` says what to pass instead.
    """
    found = [(name, type(step)) for name, step in pipeline.steps]
    if found != list(layout):
        raise CheckpointError(
            f"The classical detector's pipeline in this checkpoint is {describe_steps(pipeline.steps)}, but "
            f"this detector expects {describe_steps(layout)}; it was not loaded. {fix}"
        )
    width, source = n_features, f"this detector's {features} have"
    for name, step in pipeline.steps:
        fitted = getattr(step, "n_features_in_", None)
        if fitted is None:
            raise CheckpointError(
                f"The classical detector's pipeline in this checkpoint holds an unfitted step {name} "
                f"({type(step).__name__}); it was not loaded. {fix}"
            )
        if fitted != width:
            raise CheckpointError(
                f"The classical detector's pipeline in this checkpoint has its step {name} "
                f"({type(step).__name__}) fitted on {fitted} features, but {source} {width}; it was not "
                f"loaded. {fix}"
            )
        width = int(getattr(step, "n_components_", fitted))  # PCA narrows; scalers keep the width
        source = f"its step {name} gives"


class ClassicalModel(Detector, ResizableBuffers):
    """Pure image-feature detector: images in [0, 1] -> AnomalyOutput; the fitted pipeline is a byte buffer.

    The fitted scikit-learn pipeline is stored with skops (no pickle) in a uint8 buffer, so it
    travels inside every checkpoint like any other state; loading it rebuilds only the types in
    TRUSTED_TYPES, so a crafted checkpoint cannot run code.
    """

    score_from_map = False  # the score is the estimator's, of pooled features

    resizable_buffers = ("pipeline_skops",)

    def __init__(
        self,
        features: Literal["direct", "deep"] = "direct",
        raw_pixels: bool = False,
        backbone: str = "resnet50",
        layers: Sequence[str] = ("layer4",),
        weights: str = "imagenet",
        **geometry,
    ) -> None:
        """
        Args:
            features: direct (handcrafted, mvtec_ad.features.handcrafted) or deep (pooled backbone layers).
            raw_pixels: add every pixel value to the direct features (the seed's 224x224x3 columns).
            backbone, layers, weights: the deep feature source (layer4 = the seed's 2048 values).
            **geometry: the input geometry (image_size) of mvtec_ad.models.components.detector.Detector.
        """
        super().__init__(**geometry)
        if self.tiler is not None:
            raise ConfigError(
                "Classical detectors score whole images from pooled features, so tiling does not apply: "
                "leave --model.tile_size and --model.tile_stride out (tile with knn, patchcore or dfr)."
            )
        if features not in ("direct", "deep"):
            raise ConfigError(f"--model.features must be direct or deep, got '{features}'.")
        self.features = features
        self.raw_pixels = raw_pixels
        self.extractor = FeatureExtractor(backbone, layers, weights) if features == "deep" else None
        if self.extractor is not None:
            self.require_side(max(self.extractor.strides), self.extractor.stride_text)
        self.register_buffer("pipeline_skops", torch.empty(0, dtype=torch.uint8))
        self._pipeline: Pipeline | None = None

    @property
    def feature_width(self) -> int:
        """F of `embed`'s [B, F]: the pooled channels, or the direct statistics (and raw canvas pixels)."""
        if self.extractor is not None:
            return sum(self.extractor.channels)
        height, width = self.network_size
        return len(FEATURE_NAMES) + (3 * height * width if self.raw_pixels else 0)

    def describe_features(self) -> str:
        if self.extractor is not None:
            return f"deep features of {self.extractor.backbone_name} {self.extractor.layers}"
        return "direct features" + (" with raw pixels" if self.raw_pixels else "")

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Feature vectors [B, F] (float64 for direct features, float32 for deep)."""
        if self.extractor is None:
            return direct_features(images, raw_pixels=self.raw_pixels).to(images.device)
        return global_pool(self.extractor(images))

    def set_pipeline(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        stored = bytearray(skops.io.dumps(pipeline))
        self.pipeline_skops = torch.frombuffer(stored, dtype=torch.uint8).to(self.pipeline_skops.device)

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            if self.pipeline_skops.numel() == 0:
                raise RuntimeError(
                    "This classical detector is not fitted: fit it first or load a checkpoint (--ckpt_path)."
                )
            self._pipeline = load_pipeline(self.pipeline_skops.cpu().numpy().tobytes())
        return self._pipeline

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._pipeline = None  # rebuilt from the loaded bytes on first use

    def anomaly_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Negated `score_samples`: higher = more anomalous."""
        normality = self.pipeline.score_samples(features.detach().cpu().double().numpy())
        return torch.from_numpy(-normality).float().to(features.device)

    def detect(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> AnomalyOutput:
        scores = self.anomaly_scores(self.embed(images))
        maps = scores.view(-1, 1, 1, 1).expand(-1, 1, *images.shape[-2:]).contiguous()
        return AnomalyOutput(scores, maps)


class Classical(FitOnceModule):
    """OC-SVM / IsolationForest / LOF / EllipticEnvelope with scaler, PCA and grid search (seed report 2).

    Args:
        estimator: ocsvm | iforest | lof | elliptic.
        scaler: standard or minmax, fitted on the training features.
        pca_variance: share of variance the PCA keeps (null = no PCA).
        param_grid: hyperparameter grid (null = the seed's grid for the estimator).
        random_state: seed of IsolationForest and EllipticEnvelope.
        threshold, num_overlays: see mvtec_ad.models.components.anomaly_module.AnomalyModule.
        **model_args: ClassicalModel's (features, raw_pixels, backbone, layers, weights, image_size).
    """

    produces_maps = False

    def __init__(
        self,
        estimator: Estimator = "ocsvm",
        scaler: Literal["standard", "minmax"] = "standard",
        pca_variance: float | None = 0.95,
        param_grid: dict[str, list] | None = None,
        random_state: int = 0,
        threshold: ThresholdConfig | None = None,
        num_overlays: int = 6,
        **model_args,
    ) -> None:
        if estimator not in SEED_GRIDS:
            raise ConfigError(f"--model.estimator must be one of {', '.join(SEED_GRIDS)}, got '{estimator}'.")
        if scaler not in ("standard", "minmax"):
            raise ConfigError(f"--model.scaler must be standard or minmax, got '{scaler}'.")
        super().__init__(ClassicalModel(**model_args), threshold=threshold, num_overlays=num_overlays)
        self.save_hyperparameters()
        self.detector_name = estimator
        self.estimator = estimator
        self.scaler = scaler
        self.pca_variance = pca_variance
        self.param_grid = param_grid
        self.random_state = random_state
        self.selection: dict | None = None

    def embed(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        return (self.model.embed(images),)

    def pipeline_layout(self) -> list[tuple[str, type]]:
        """Names and classes of the steps fit_features writes for these options, in order."""
        steps = [(name, type(step)) for name, step in self.preprocessing()]
        return [*steps, ("estimator", ESTIMATOR_CLASSES[self.estimator])]

    def check_pipeline(self, pipeline: Pipeline) -> None:
        """CheckpointError (one line) unless `pipeline` is what this detector fits, for its features."""
        pca = "null" if self.pca_variance is None else self.pca_variance
        fix = (
            f"Use a checkpoint written by this detector (--model.estimator {self.estimator} --model.scaler "
            f"{self.scaler} --model.pca_variance {pca}, {self.model.describe_features()}), or pass the "
            f"--model options the checkpoint was trained with."
        )
        check_pipeline(
            pipeline, self.pipeline_layout(), self.model.feature_width, self.model.describe_features(), fix
        )

    def load_state_dict(self, state_dict, *args, **kwargs):
        """nn.Module's, then the stored pipeline is rebuilt and checked now, not at its first score.

        Lightning loads every checkpoint (test, predict, export, resume) through here.
        """
        result = super().load_state_dict(state_dict, *args, **kwargs)
        if self.model.pipeline_skops.numel():
            try:
                self.check_pipeline(self.model.pipeline)
            except CheckpointError:  # "it was not loaded": leave no refused pipeline to score with
                self.model.pipeline_skops = self.model.pipeline_skops.new_empty(0)
                self.model._pipeline = None
                self.fitted.fill_(False)
                raise
        return result

    def preprocessing(self) -> list[tuple[str, object]]:
        scaler = StandardScaler() if self.scaler == "standard" else MinMaxScaler()
        steps: list[tuple[str, object]] = [("scaler", scaler)]
        if self.pca_variance is not None and self.pca_variance < 1.0:
            steps.append(("pca", PCA(n_components=self.pca_variance, svd_solver="full")))
        return steps

    def validation_features(self) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
        """Features, labels and folds of the DataModule's validation set (all on this process)."""
        feats, labels = [], []
        with torch.no_grad():
            for batch in self.data.val_dataloader():
                images = self.model.pre_processor(batch.image.to(self.device))
                feats.append(self.model.embed(images).cpu().double())
                labels.append(batch.label)
        if not feats:
            return np.zeros((0, 0)), np.zeros(0, dtype=int), []
        return torch.cat(feats).numpy(), torch.cat(labels).numpy(), self.data.val_folds()

    def fit_features(self, train_features: torch.Tensor) -> None:
        x_train = train_features.cpu().double().numpy()
        name, seed = self.estimator, self.random_state
        prep = Pipeline(self.preprocessing()).fit(x_train)
        z_train = prep.transform(x_train)
        candidates = grid_points(self.param_grid or SEED_GRIDS[name])
        x_val, y_val, folds = self.validation_features()
        if len(set(y_val.tolist())) == 2 and len(candidates) > 1:
            z_val = prep.transform(x_val)

            def fit_score(params: dict) -> np.ndarray:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # e.g. EllipticEnvelope on near-singular covariances
                    return -make_estimator(name, params, seed, len(z_train)).fit(z_train).score_samples(z_val)

            best, table = select_by_cv(fit_score, candidates, y_val, folds, trainer=self._trainer)
            self.selection = {**best, "grid_size": len(table), "folds": len(folds)}
        else:
            rank_zero_warn(
                f"{name}: the validation data holds no anomalies, so no hyperparameters can be selected; "
                f"using the grid's first point {candidates[0]}. Use --data.protocol synthetic or test_split "
                f"for cross-validated selection."
            )
            self.selection = {"params": candidates[0], "cv_auroc": None, "cv_auroc_std": None}
        estimator = make_estimator(name, self.selection["params"], seed, len(z_train))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimator.fit(z_train)
        pipeline = Pipeline([*prep.steps, ("estimator", estimator)])
        self.model.set_pipeline(pipeline)
        dims = z_train.shape[1]
        rank_zero_info(
            f"{name}: {x_train.shape[1]} {self.model.features} features -> {dims} after PCA; chose "
            f"{self.selection['params']} (CV AUROC {self.selection['cv_auroc']})."
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["selection"] = self.selection

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.selection = checkpoint.get("selection")

    def extra_results(self) -> dict:
        return {"features": self.model.features, "selection": self.selection}
