"""DFR end to end on the tiny demo set: fit + test, threshold from validation only, resume."""

import json
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mvtec_ad.commands.lightning import AnomalyTrainer
from mvtec_ad.data.datamodule import AnomalyDataModule
from mvtec_ad.evaluation.results import METRIC_KEYS
from mvtec_ad.evaluation.thresholds import fit_threshold
from mvtec_ad.models.dfr import DFR
from tests.helpers import TEST_IMAGE_SIZE, tiny_dfr_kwargs


def make_trainer(root_dir, max_epochs, callbacks=()):
    return AnomalyTrainer(
        max_epochs=max_epochs,
        default_root_dir=root_dir,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=list(callbacks),
        deterministic=True,
    )


def dfr_datamodule(root, category="fabric") -> AnomalyDataModule:
    """Not bound: the DFR under test binds its own geometry when the Trainer sets it up."""
    return AnomalyDataModule(root, category, train_batch_size=4, eval_batch_size=8, val_split=0.25)


def tiny_dfr(**kwargs) -> DFR:
    return DFR(**tiny_dfr_kwargs(), image_size=TEST_IMAGE_SIZE, **kwargs)


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory):
    root_dir = tmp_path_factory.mktemp("dfr")
    seed_everything(0)  # independent of which tests ran before
    model = tiny_dfr(early_stopping_patience=50)
    dm = dfr_datamodule(tiny_root)
    trainer = make_trainer(root_dir, max_epochs=8)
    trainer.train(model, dm)
    return model, dm, trainer


def test_fit_test_writes_sane_metrics(trained):
    model, dm, trainer = trained
    log_dir = trainer.log_dir
    metrics = json.loads(open(f"{log_dir}/metrics.json").read())
    assert list(metrics)[: len(METRIC_KEYS)] == list(METRIC_KEYS)
    assert (
        metrics["detector"] == "dfr" and metrics["category"] == "fabric" and metrics["protocol"] == "official"
    )
    assert metrics["n_test"] == 12 and metrics["n_defective"] == 8
    for key in (
        "image_auroc",
        "pixel_auroc",
        "pixel_aupro",
        "image_f1_max",
        "precision",
        "recall",
        "specificity",
        "balanced_accuracy",
        "error_rate",
    ):
        assert metrics[key] is not None and 0.0 <= metrics[key] <= 1.0, key
    # demo defects are obvious: even 4 epochs at 64 px must rank them well above chance
    assert metrics["image_auroc"] >= 0.8
    assert metrics["pixel_auroc"] >= 0.8
    assert metrics["threshold"] == pytest.approx(float(model.threshold))
    assert metrics["checkpoint"].endswith("best.ckpt")
    assert {p.name for p in (Path(log_dir) / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    overlays = list(Path(log_dir).glob("overlays/*.png"))
    k = model.evaluator.num_overlays  # per group: worst-scored normals, best- and worst-scored defects
    assert len(overlays) == min(k, 4) + min(2 * k, 8)  # 4 good and 8 defective test images
    charts = {p.name for p in (Path(log_dir) / "plots").iterdir()}
    assert charts == {"roc.png", "pro.png", "histogram.png", "confusion.png"}


def test_tensorboard_has_test_metrics_and_overlays(trained):
    _, _, trainer = trained
    acc = EventAccumulator(trainer.log_dir, size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "test/image_auroc" in tags["scalars"] and "val_loss" in tags["scalars"]
    assert any(t.startswith("test_overlays/") for t in tags["images"])


def test_threshold_is_fitted_on_validation_normals_only(trained):
    model, dm, _ = trained
    model.eval()
    with torch.no_grad():
        val_scores = torch.cat([model(b.image).score for b in dm.val_dataloader()])
        test_scores = torch.cat([model(b.image).score for b in dm.test_dataloader()])
    config = model.evaluator.threshold_config
    expected = fit_threshold(val_scores, None, config)
    assert float(model.threshold) == pytest.approx(expected, rel=1e-4)
    assert float(model.threshold) != pytest.approx(fit_threshold(test_scores, None, config), rel=1e-3)


def test_checkpoint_restores_model_built_from_config(trained):
    model, dm, trainer = trained
    fresh = tiny_dfr()
    assert fresh.model.autoencoder is None
    test_trainer = make_trainer(trainer.default_root_dir, max_epochs=1)
    test_trainer.test(
        fresh, datamodule=dfr_datamodule(dm.root), ckpt_path=trainer.checkpoint_callback.best_model_path
    )
    assert fresh.model.latent_dim == model.model.latent_dim
    assert float(fresh.threshold) == pytest.approx(float(model.threshold))
    assert fresh.test_results["image_auroc"] == pytest.approx(model.test_results["image_auroc"])


class RecordEpochs(Callback):
    def __init__(self, crash_after=None):
        self.epochs, self.crash_after = [], crash_after

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append(trainer.current_epoch)
        if trainer.current_epoch == self.crash_after:
            raise RuntimeError("simulated crash")  # killed early in an epoch, after last.ckpt was written


def test_resume_ends_with_the_same_epochs(tiny_root, tmp_path):
    def run(root_dir, callback, ckpt_path=None):
        torch.manual_seed(0)
        model = tiny_dfr(early_stopping_patience=50)
        trainer = make_trainer(root_dir, max_epochs=4, callbacks=[callback])
        trainer.fit(model, datamodule=dfr_datamodule(tiny_root), ckpt_path=ckpt_path)
        return trainer

    straight = RecordEpochs()
    full = run(tmp_path / "straight", straight)

    crashed = RecordEpochs(crash_after=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "crash", crashed)
    last = next((tmp_path / "crash").rglob("last.ckpt"))
    assert torch.load(last, weights_only=False)["epoch"] == 1
    resumed = RecordEpochs()
    again = run(tmp_path / "crash", resumed, ckpt_path=str(last))

    assert straight.epochs == [0, 1, 2, 3]
    assert crashed.epochs == [0, 1, 2]
    assert resumed.epochs == [2, 3]  # epoch 2 never finished: it runs again, nothing is repeated or skipped
    assert again.global_step == full.global_step
    assert math.isfinite(float(again.lightning_module.threshold))


def test_feature_cache_runs_the_backbone_once_per_image_and_changes_nothing(tiny_root, tmp_path):
    def fit(cache: bool) -> tuple[DFR, int, AnomalyDataModule]:
        seed_everything(0)
        # a small lr keeps Adam's amplification of rounding noise (below) well inside the tolerance on any
        # CPU's kernels: at 1e-3 AMX-era oneDNN drifted to 1.5e-3 relative, at 1e-4 it stays ~3e-5
        model = tiny_dfr(early_stopping_patience=50, cache_features=cache, lr=1e-4)
        calls = []
        model.model.extractor.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
        dm = dfr_datamodule(tiny_root)
        make_trainer(tmp_path / str(cache), max_epochs=3).fit(model, datamodule=dm)
        return model, sum(calls), dm

    cached, cached_images, dm = fit(True)
    plain, plain_images, _ = fit(False)
    n_train, n_val = len(dm.train_set), len(dm.val_set)
    # statistics pass fills the cache; sanity check + 3 validation epochs + 3 training epochs reuse it
    assert cached_images == n_train + n_val
    assert plain_images == n_train + n_val * 4 + n_train * 3  # statistics, sanity + 3 val, 3 train epochs
    assert len(cached.feature_cache) == n_train + n_val
    # the same training up to float rounding: the backbone saw batches of other sizes (~1e-6 apart),
    # and Adam turns the rounding-noise gradients of the biases before BatchNorm into full steps,
    # which BatchNorm cancels; so compare what the models compute, not their weights
    images = next(iter(dm.test_dataloader())).image
    with torch.no_grad():
        a, b = cached.eval()(images), plain.eval()(images)
    assert torch.allclose(a.score, b.score, rtol=1e-3) and torch.allclose(a.map, b.map, rtol=1e-3, atol=1e-4)
