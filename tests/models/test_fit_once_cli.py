"""kNN, PatchCore and the classical detectors through the CLI on the tiny set, and a 2-process DDP fit."""

import json
from pathlib import Path

import pytest
import torch

from mvtec_ad.models.classical import Classical
from mvtec_ad.models.patchcore import PatchCore
from tests.helpers import cli, datamodule, tiny_args

CLASSICAL = ("ocsvm", "iforest", "lof", "elliptic")


def args(config: str, root: Path, out: Path, *extra: str) -> list[str]:
    return tiny_args(f"configs/demo/{config}.yaml", root, out, "--data.eval_batch_size", "8", *extra)


def metrics_of(out: Path) -> dict:
    (path,) = out.glob("lightning_logs/version_*/metrics.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("config", ["knn", "patchcore"])
def test_memory_bank_train_then_test_from_checkpoint(config, tiny_root, tmp_path):
    cli("train", *args(config, tiny_root, tmp_path / "run"))
    trained = metrics_of(tmp_path / "run")
    assert trained["detector"] == config and trained["protocol"] == "official" and trained["n_test"] == 12
    for key in (
        "image_auroc",
        "pixel_auroc",
        "pixel_aupro",
        "threshold",
        "precision",
        "pixel_threshold",
        "seg_f1",
    ):
        assert trained[key] is not None and trained[key] == trained[key], key
    assert trained["aupro_fpr_limit"] == 0.3 and trained["seg_f1"] <= trained["pixel_f1_max"]
    assert trained["image_auroc"] >= 0.7 and trained["pixel_auroc"] >= 0.7
    checkpoint = Path(trained["checkpoint"])
    assert checkpoint.name == "model.ckpt" and checkpoint.is_file()
    # a fresh process builds the model from the config; bank and threshold come from the checkpoint
    cli("test", *args(config, tiny_root, tmp_path / "again"), "--ckpt_path", str(checkpoint))
    tested = metrics_of(tmp_path / "again")
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "threshold", "pixel_threshold", "seg_f1"):
        assert tested[key] == pytest.approx(trained[key], rel=1e-6), key


@pytest.mark.parametrize("estimator", CLASSICAL)
def test_classical_detectors_select_on_validation_folds_and_report_no_pixel_metrics(
    estimator, tiny_root, tmp_path
):
    cli("train", *args(estimator, tiny_root, tmp_path / "run"))
    m = metrics_of(tmp_path / "run")
    assert m["detector"] == estimator and m["protocol"] == "synthetic" and "75%" in m["protocol_detail"]
    assert m["image_auroc"] is not None and 0.0 <= m["image_auroc"] <= 1.0
    assert m["pixel_auroc"] is None and m["pixel_aupro"] is None  # image-only detectors: null, not faked
    assert m["selection"]["folds"] == 3 and 0.0 <= m["selection"]["cv_auroc"] <= 1.0
    assert m["selection"]["grid_size"] == {"ocsvm": 12, "iforest": 16, "lof": 32, "elliptic": 4}[estimator]
    assert m["threshold"] is not None
    if estimator == "ocsvm":  # the selection survives the checkpoint
        cli("test", *args(estimator, tiny_root, tmp_path / "again"), "--ckpt_path", m["checkpoint"])
        again = metrics_of(tmp_path / "again")
        assert again["selection"] == m["selection"]
        assert again["image_auroc"] == pytest.approx(m["image_auroc"])


def test_direct_features_through_the_cli(tiny_root, tmp_path):
    cli(
        "train",
        *args("ocsvm", tiny_root, tmp_path, "--model.features", "direct", "--data.protocol", "test_split"),
    )
    m = metrics_of(tmp_path)
    assert m["features"] == "direct" and m["protocol"] == "test_split"
    assert m["n_test"] == 2 + 4  # 40% of the 4 good and one of each 2-image defect type stay test


def scores_of(model, root) -> torch.Tensor:
    dm = datamodule(root, "washer", eval_batch_size=8)
    with torch.no_grad():
        return torch.cat([model.eval()(b.image).score for b in dm.test_dataloader()])


@pytest.mark.parametrize(("config", "module"), [("patchcore", PatchCore), ("ocsvm", Classical)])
def test_two_process_ddp_fit_gives_the_single_process_scores(config, module, tiny_root, tmp_path):
    ddp = ("--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp")
    for name, extra in (("single", ("--trainer.accelerator", "cpu")), ("ddp", ddp)):
        # 9 or 7 training images over 2 processes: the sampler pads one, which must not reach the fit
        cli("fit", *args(config, tiny_root, tmp_path / name, "--data.train_batch_size", "4", *extra))
    (single,) = (tmp_path / "single").rglob("model.ckpt")
    (double,) = (tmp_path / "ddp").rglob("model.ckpt")
    a = module.load_from_checkpoint(single, map_location="cpu")
    b = module.load_from_checkpoint(double, map_location="cpu")
    # batches split differently over processes: equal up to float32 summation order
    assert float(a.threshold) == pytest.approx(float(b.threshold), rel=1e-5)
    assert torch.allclose(scores_of(a, tiny_root), scores_of(b, tiny_root), rtol=1e-5, atol=1e-6)


def test_pixel_threshold_is_fitted_on_the_validation_normals_maps(tiny_root, tmp_path):
    """The checkpoint's pixel threshold is the configured rule over the normal validation maps, not test's."""
    from mvtec_ad.evaluation.evaluator import map_summary
    from mvtec_ad.evaluation.thresholds import fit_pixel_threshold

    rule = ("--model.threshold.pixel_method", "quantile", "--model.threshold.pixel_quantile", "0.9")
    cli("train", *args("patchcore", tiny_root, tmp_path / "run", "--data.val_split", "0.5", *rule))
    m = metrics_of(tmp_path / "run")
    module = PatchCore.load_from_checkpoint(m["checkpoint"], map_location="cpu").eval()
    config = module.evaluator.threshold_config
    assert (config.pixel_method, config.pixel_quantile) == ("quantile", 0.9)  # travelled in the checkpoint
    dm = datamodule(tiny_root, "washer", module.geometry.size[0], val_split=0.5, seed=42)
    peaks, samples = [], []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            peak, sample = map_summary(module.detect_batch(batch).map, batch)
            peaks.append(peak)
            samples.append(sample)
    expected = fit_pixel_threshold(torch.cat(peaks), torch.cat(samples), config)
    assert float(module.pixel_threshold) == pytest.approx(expected, rel=1e-5)
    assert m["pixel_threshold"] == pytest.approx(expected, rel=1e-5)
    assert m["threshold_method"].endswith(", pixel quantile 0.9 x 1")
