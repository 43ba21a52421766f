"""Where a `test` run's time goes, stage by stage, against the backbone alone.

    python benchmarks/test_loop.py --root ../shared/data --category magnetic_tile
    MVTEC_AD_CPU=avx2 python benchmarks/test_loop.py --root ../shared/data --category magnetic_tile

Fits the config's detector (default configs/demo/patchcore.yaml; offline weights), saves its
checkpoint, then runs `test` from that checkpoint as `python -m mvtec_ad test --ckpt_path` does,
with a timer around each stage (functions wrapped in this process; nothing else changes):

  checkpoint load   reading the checkpoint (AtomicCheckpointIO.load_checkpoint)
  decode            test images read, decoded and placed on the canvas (dataset items + collate)
  backbone          FeatureExtractor forward
  search            memory-bank search (BankSearch)
  map head          upsampling, blur and image score (AnomalyMapHead)
  model, rest       the detector's forward minus the three above (pre-processing, pooling)
  metrics update    per-batch scores and maps gathered for the metrics (AnomalyMetrics.update)
  pictures staged   overlay selection and the gallery's per-image arrays (batch end)
  metrics           AUROC, AUPRO, F1, curves (AnomalyMetrics.compute)
  pictures drawn    the report's thumbnails and panels (Gallery.finish)
  report page       charts, overlays, metrics.json, index.html (write_test_report)
  Trainer, rest     everything else the Trainer did in test (loops, hooks, logging)

The same decoded images then go through the backbone alone, in batches of the test batch size:
`ratio` = test images/s over backbone images/s, the share of the ceiling the test loop reaches.
Prints a markdown table; not part of `make test` (a test runs it on a tiny set).
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STAGES = [
    "checkpoint load",
    "decode",
    "backbone",
    "search",
    "map head",
    "model, rest",
    "metrics update",
    "pictures staged",
    "metrics",
    "pictures drawn",
    "report page",
    "Trainer, rest",
]


class Timers:
    """Seconds per stage from wrapped functions; a call inside another timed call counts in both."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner, name: str, stage: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        setattr(owner, name, timed)


def profile(args: argparse.Namespace) -> tuple[list[tuple[str, float]], dict]:
    """Fit, then test from the checkpoint with every stage timed: (stage, seconds) rows and facts."""
    import torch
    from lightning.pytorch import seed_everything
    from omegaconf import OmegaConf

    from mvtec_ad.commands.lightning import AnomalyTrainer
    from mvtec_ad.data import datamodule as datamodule_module
    from mvtec_ad.data.datamodule import AnomalyDataModule
    from mvtec_ad.data.dataset import AnomalyDataset, collate_batch
    from mvtec_ad.evaluation import evaluator, metrics
    from mvtec_ad.evaluation.selection import OverlaySelection
    from mvtec_ad.features.backbone import FeatureExtractor
    from mvtec_ad.models.components.map_head import AnomalyMapHead
    from mvtec_ad.report.gallery import Gallery
    from mvtec_ad.runs import AtomicCheckpointIO
    from mvtec_ad.search import cpu
    from mvtec_ad.search.bank import BankSearch

    seed_everything(42)
    config = OmegaConf.to_container(OmegaConf.load(args.config))
    model_config = config["model"]
    module_path, class_name = model_config["class_path"].rsplit(".", 1)
    model_class = getattr(__import__(module_path, fromlist=[class_name]), class_name)
    model_args = model_config.get("init_args", {})
    if args.image_size is not None:
        model_args["image_size"] = args.image_size
    batch_size = args.batch_size
    with tempfile.TemporaryDirectory() as logs:
        data = AnomalyDataModule(
            args.root, args.category, eval_batch_size=batch_size, train_batch_size=batch_size
        )
        trainer = AnomalyTrainer(
            max_epochs=config.get("trainer", {}).get("max_epochs", 1)
            if args.max_epochs is None
            else args.max_epochs,
            accelerator=args.accelerator,
            devices=1,
            default_root_dir=logs,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        start = time.perf_counter()
        trainer.fit(model_class(**model_args), datamodule=data)
        fit_seconds = time.perf_counter() - start
        checkpoint = (
            trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
        )

        # a fresh model and Trainer, the checkpoint loaded by test, as `python -m mvtec_ad test --ckpt_path`
        start = time.perf_counter()
        model = model_class(**model_args)
        build_seconds = time.perf_counter() - start
        timers = Timers()
        timers.wrap(AtomicCheckpointIO, "load_checkpoint", "checkpoint load")
        timers.wrap(AnomalyDataset, "__getitem__", "decode")
        timers.wrap(datamodule_module, "collate_batch", "decode")  # the DataLoaders' collate_fn
        timers.wrap(FeatureExtractor, "forward", "backbone")
        timers.wrap(BankSearch, "__call__", "search")
        timers.wrap(AnomalyMapHead, "forward", "map head")
        timers.wrap(model_class, "test_step", "model")
        timers.wrap(metrics.AnomalyMetrics, "update", "metrics update")
        timers.wrap(OverlaySelection, "update", "pictures staged")
        timers.wrap(Gallery, "add", "pictures staged")
        timers.wrap(metrics.AnomalyMetrics, "compute", "metrics")
        timers.wrap(Gallery, "finish", "pictures drawn")
        timers.wrap(evaluator, "write_test_report", "report page")

        data = AnomalyDataModule(
            args.root, args.category, eval_batch_size=batch_size, train_batch_size=batch_size
        )
        tester = AnomalyTrainer(
            accelerator=args.accelerator,
            devices=1,
            default_root_dir=logs,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        start = time.perf_counter()
        tester.test(model, datamodule=data, ckpt_path=checkpoint, verbose=False)
        test_seconds = time.perf_counter() - start
        results = model.test_results

    s = timers.seconds
    model_rest = s["model"] - s["backbone"] - s["search"] - s["map head"]
    rows = [(stage, s[stage]) for stage in STAGES[:5]] + [("model, rest", model_rest)]
    rows += [(stage, s[stage]) for stage in STAGES[6:11]]
    rows.append(("Trainer, rest", test_seconds - sum(seconds for _, seconds in rows)))

    # the backbone alone on the same decoded images
    net = model.model.eval()
    device = next(net.parameters()).device
    n_test = len(data.test_set)
    items = [data.test_set[i] for i in range(n_test)]
    batches = [
        collate_batch(items[i : i + batch_size]).image.to(device) for i in range(0, n_test, batch_size)
    ]
    with torch.inference_mode():
        net.extractor(net.network_input(net.pre_processor(batches[0])))  # warm-up
        start = time.perf_counter()
        for x in batches:
            net.extractor(net.network_input(net.pre_processor(x)))
        backbone_seconds = time.perf_counter() - start
    facts = {
        "cpu": cpu.describe(),
        "detector": model.detector_name,
        "config": str(args.config),
        "search": results.get("search"),
        "fit_s": fit_seconds,
        "build_s": build_seconds,
        "test_s": test_seconds,
        "test_images": n_test,
        "test_img_s": n_test / test_seconds,
        "backbone_img_s": n_test / backbone_seconds,
        "ratio": backbone_seconds / test_seconds,
        "image_auroc": results.get("image_auroc"),
        "pixel_aupro": results.get("pixel_aupro"),
    }
    return rows, facts


def table(rows: list[tuple[str, float]], facts: dict) -> str:
    total = facts["test_s"]
    lines = [
        f"{facts['detector']} ({facts['config']}), {facts['test_images']} test images; search {facts['search']}",
        f"cpu: {facts['cpu']}",
        "",
        "| stage | s | share of test |",
        "|---|---|---|",
    ]
    lines += [f"| {stage} | {seconds:.2f} | {seconds / total:.1%} |" for stage, seconds in rows]
    lines += [
        f"| **test, as the Trainer runs it** | **{total:.2f}** | 100% |",
        "",
        f"test {facts['test_img_s']:.1f} img/s, backbone alone {facts['backbone_img_s']:.1f} img/s: "
        f"ratio {facts['ratio']:.3f} (before the test: model built in {facts['build_s']:.1f} s; "
        f"fit {facts['fit_s']:.1f} s; image AUROC {facts['image_auroc']}, "
        f"AUPRO {facts['pixel_aupro']})",
    ]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="datasets/demo")
    parser.add_argument("--category", default="fabric")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo" / "patchcore.yaml")
    parser.add_argument("--image_size", type=int, default=None, help="default: the config's")
    parser.add_argument("--max_epochs", type=int, default=None, help="default: the config's")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--accelerator", default="auto")
    return parser


def main(argv: list[str] | None = None) -> str:
    args = parser().parse_args(argv)
    text = table(*profile(args))
    print(text)
    return text


if __name__ == "__main__":
    main()
