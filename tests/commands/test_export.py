"""`python -m mvtec_ad export`: every torch detector's ONNX model gives its checkpoint's scores and maps.

Each detector is fitted on the tiny set for one short epoch through the CLI entry point (in this
process: no interpreter start-up), exported, and run with onnxruntime against the PyTorch module
loaded from the same checkpoint, at two batch sizes (the batch axis is dynamic).
"""

import importlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mvtec_ad.cli import main
from mvtec_ad.commands.export import export_onnx
from mvtec_ad.commands.export import main as export_main
from mvtec_ad.data.dataset import AnomalyDataset
from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.data.sources.mvtec import scan_category
from mvtec_ad.errors import CheckpointError, ConfigError
from tests.helpers import TEST_IMAGE_SIZE, main_in_process, tiny_args

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

SHORT_FIT = ("--trainer.max_epochs", "1", "--data.train_batch_size", "4")
DETECTORS = {  # demo config -> (class, fit options that keep the fit to seconds)
    "knn": ("mvtec_ad.models.knn.KNN", ()),
    # the default recipe keeps the aspect ratio; squash here (keep_aspect export: test_export_geometry.py)
    "patchcore": ("mvtec_ad.models.patchcore.PatchCore", ("--model.resize", "squash")),
    # window_max score, 5x5 pool, stride-16/32 layers (keep_aspect export: test_export_geometry.py)
    "patchcore_magnetic_tile": ("mvtec_ad.models.patchcore.PatchCore", ("--model.resize", "squash")),
    "dfr": ("mvtec_ad.models.dfr.DFR", SHORT_FIT),
    "feature_ae": ("mvtec_ad.models.feature_ae.FeatureAE", SHORT_FIT),
    "pixel_ae": ("mvtec_ad.models.pixel_ae.PixelAE", (*SHORT_FIT, "--data.samples_per_epoch", "8")),
    "favae": ("mvtec_ad.models.favae.FAVAE", (*SHORT_FIT, "--data.samples_per_epoch", "8")),
}
# float32 rounding: ONNX folds BatchNorm into the convs and runs other kernels; maps of
# feature_ae reach ~100, where 1e-4 is a few float32 steps, hence the small relative term
ATOL, RTOL = 1e-4, 1e-5


def detector_class(name: str):
    module_name, class_name = DETECTORS[name][0].rsplit(".", 1)
    return getattr(importlib.import_module(module_name), class_name)


def fit(name: str, root: Path, out: Path) -> Path:
    """Fit the demo config on the tiny set; its checkpoint (best.ckpt, or model.ckpt for fit-once detectors)."""
    config = f"configs/demo/{name}.yaml"
    main_in_process(["fit", *tiny_args(config, root, out, "--trainer.logger", "false", *DETECTORS[name][1])])
    checkpoints = {p.name: p for p in (out / "checkpoints").glob("*.ckpt")}
    return checkpoints.get("best.ckpt") or checkpoints["model.ckpt"]


@pytest.fixture(scope="module")
def fitted(tiny_root, tmp_path_factory):
    """name -> checkpoint, each detector fitted once for this module."""
    checkpoints: dict[str, Path] = {}

    def checkpoint(name: str) -> Path:
        if name not in checkpoints:
            checkpoints[name] = fit(name, tiny_root, tmp_path_factory.mktemp(name))
        return checkpoints[name]

    return checkpoint


@pytest.fixture(scope="module")
def test_images(tiny_root) -> torch.Tensor:
    """Four test images of the tiny washer category (good and defective), as the test loop sees them."""
    samples = scan_category(tiny_root, "washer").test
    dataset = AnomalyDataset(
        [samples[0], samples[3], samples[-4], samples[-1]], InputGeometry.of(TEST_IMAGE_SIZE)
    )
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def assert_onnx_matches(path: Path, module, images: torch.Tensor) -> None:
    """onnxruntime's scores and maps equal the module's, for a batch of 4 and of 1."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    for batch in (images, images[2:3]):
        score, amap = session.run(["score", "map"], {"image": batch.numpy()})
        with torch.no_grad():
            expected = module(batch)
        assert score.shape == (len(batch),) and amap.shape == (
            len(batch),
            1,
            TEST_IMAGE_SIZE,
            TEST_IMAGE_SIZE,
        )
        assert np.isfinite(score).all() and np.isfinite(amap).all()
        torch.testing.assert_close(torch.from_numpy(score), expected.score, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(torch.from_numpy(amap), expected.map, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_onnx_export_gives_the_checkpoint_scores_and_maps(name, fitted, tmp_path, test_images):
    checkpoint = fitted(name)
    out = tmp_path / "exported" / f"{name}.onnx"
    export_main(["--config", f"configs/demo/{name}.yaml", "--ckpt_path", str(checkpoint), "--out", str(out)])

    # the reference: the checkpoint loaded as `test` and `predict` load it (backbone weights included)
    module = detector_class(name).load_from_checkpoint(checkpoint, map_location="cpu").eval()
    assert_onnx_matches(out, module, test_images)

    metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    threshold = float(module.threshold)
    assert math.isfinite(threshold)
    assert float(metadata["threshold"]) == threshold
    pixel_threshold = float(module.pixel_threshold)  # the pixel threshold survives the ONNX export
    assert math.isfinite(pixel_threshold) and float(metadata["pixel_threshold"]) == pixel_threshold
    assert metadata["image_size"] == str(TEST_IMAGE_SIZE)
    assert metadata["detector"] == module.detector_name == name.split("_magnetic_tile")[0]

    if name == "patchcore":  # the re-weighted score too (nearest neighbours of the worst patch)
        reweighted = detector_class(name).load_from_checkpoint(
            checkpoint,
            map_location="cpu",
            reweight=True,
            num_neighbors=3,
            score="max",
            coarse_layers=[],
            strict=False,
        )  # re-weighting applies to one bank's max score (the default recipe: window_max, two banks;
        # strict=False leaves out the coarse bank's backbone stages)
        path = export_onnx(reweighted.eval(), tmp_path / "reweighted.onnx")
        assert_onnx_matches(path, reweighted, test_images)


def test_default_output_is_the_checkpoint_path_with_onnx(fitted, tmp_path, capsys):
    checkpoint = tmp_path / "knn.ckpt"
    checkpoint.write_bytes(fitted("knn").read_bytes())
    export_main(["--config", "configs/demo/knn.yaml", "--ckpt_path", str(checkpoint)])
    assert (tmp_path / "knn.onnx").is_file()
    assert f"to {tmp_path / 'knn.onnx'}" in capsys.readouterr().out


def test_classical_detector_is_refused_with_the_reason(tmp_path):
    from mvtec_ad.models.classical import Classical

    module = Classical(estimator="ocsvm", features="direct")
    with pytest.raises(ConfigError, match="scikit-learn pipeline, not a torch module"):
        export_onnx(module, tmp_path / "ocsvm.onnx")
    assert not (tmp_path / "ocsvm.onnx").exists()


def test_export_errors_exit_2_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--config", "configs/demo/knn.yaml", "--ckpt_path", str(missing)])
    assert exit_info.value.code == 2
    assert f"Checkpoint '{missing}' does not exist" in capsys.readouterr().err


def test_checkpoint_of_another_detector_is_refused(fitted):
    checkpoint = fitted("knn")
    with pytest.raises(CheckpointError, match="holds a mvtec_ad.models.knn.KNN.*names .*PatchCore"):
        export_main(["--config", "configs/demo/patchcore.yaml", "--ckpt_path", str(checkpoint)])
