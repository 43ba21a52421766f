"""Training speed of the gradient detectors: first vs later epochs, images/s and peak memory.

    python benchmarks/training.py --root ../shared/data --category magnetic_tile --epochs 3
    python benchmarks/training.py --configs configs/demo/feature_ae.yaml --precision bf16-mixed --channels_last

Each config is fitted by the real CLI (`python -m mvtec_ad fit`) in its own process, with
`EpochTimer` added as a trainer callback; an epoch is train + validation + checkpointing; setup is
what runs before the first epoch (DFR's statistics pass, which also fills its feature cache).
Prints a markdown table. Not part of `make test`: timings belong here, not in tests.

On a machine shared with other jobs, prefix OMP_NUM_THREADS=1: torch's intra-op threads wait
for each other at every op, and a thread that lost its core makes small ops 100x slower or worse.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIGS = ("configs/demo/dfr.yaml", "configs/demo/pixel_ae.yaml", "configs/demo/feature_ae.yaml")
OPTIONAL_CONFIGS = ("configs/demo/favae.yaml",)


class EpochTimer(Callback):
    """Seconds and training images of every epoch, and the process's peak RSS, written to `out` as JSON."""

    def __init__(self, out: str, channels_last: bool = False) -> None:
        self.out = out
        self.channels_last = channels_last
        self.seconds: list[float] = []
        self.images: list[int] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._fit_start = time.perf_counter()  # before the module's setup (DFR's statistics pass)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.setup_seconds = time.perf_counter() - self._fit_start
        if self.channels_last:  # after setup, so lazily built parts (DFR's autoencoder) convert too
            pl_module.to(memory_format=torch.channels_last)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()
        self.images.append(0)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx
    ) -> None:
        self.images[-1] += len(batch)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        record = {
            "setup_seconds": self.setup_seconds,
            "seconds": self.seconds,
            "images": self.images,
            "peak_rss_mib": peak_kib / 1024,
        }
        Path(self.out).write_text(json.dumps(record))


def fit_and_time(config: str, a: argparse.Namespace, work: Path) -> dict:
    """One `python -m mvtec_ad fit` run of `config`; returns EpochTimer's record."""
    out = work / f"{Path(config).stem}.json"
    cmd = [
        sys.executable,
        "-m",
        "mvtec_ad",
        "fit",
        "--config",
        config,
        "--data.root",
        a.root,
        "--data.category",
        a.category,
        "--trainer.max_epochs",
        str(a.epochs),
        "--trainer.precision",
        a.precision,
        "--trainer.default_root_dir",
        str(work / Path(config).stem),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks+=benchmarks.training.EpochTimer",
        f"--trainer.callbacks.out={out}",
        f"--trainer.callbacks.channels_last={str(a.channels_last).lower()}",
    ]
    if a.image_size:
        cmd += ["--model.image_size", str(a.image_size)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{' '.join(cmd)}\nfailed:\n{result.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_configs = [*DEMO_CONFIGS, *(c for c in OPTIONAL_CONFIGS if (REPO / c).is_file())]
    parser.add_argument("--configs", nargs="+", default=default_configs)
    parser.add_argument("--root", default="datasets/demo")
    parser.add_argument("--category", default="fabric")
    parser.add_argument("--epochs", type=int, default=3, help="at least 2: the first and later epochs")
    parser.add_argument("--image_size", type=int, default=None, help="default: each config's own")
    parser.add_argument("--precision", default="32-true", help="e.g. bf16-mixed, 16-mixed")
    parser.add_argument("--channels_last", action="store_true", help="convert the model to channels_last")
    a = parser.parse_args()
    if a.epochs < 2:
        parser.error("--epochs must be at least 2 to compare the first epoch with later ones")
    a.root = str(Path(a.root).resolve())

    print(
        f"{a.root}/{a.category}, {a.epochs} epochs, precision {a.precision}, "
        f"channels_last {a.channels_last}, image size {a.image_size or 'per config'}\n"
    )
    print(
        "| config | train images/epoch | setup s | first epoch s | later epochs s (mean) | first/later "
        "| (setup+first)/later | images/s (later) | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        for config in a.configs:
            try:
                record = fit_and_time(config, a, Path(tmp))
            except RuntimeError as error:  # one broken config must not lose the other rows
                print(error, file=sys.stderr)
                print(f"| {config} | failed (see stderr) | | | | | | | |", flush=True)
                continue
            seconds, images = record["seconds"], record["images"]
            later = sum(seconds[1:]) / len(seconds[1:])
            rate = sum(images[1:]) / sum(seconds[1:])
            setup = record["setup_seconds"]
            print(
                f"| {config} | {images[0]} | {setup:.1f} | {seconds[0]:.1f} | {later:.1f} "
                f"| {seconds[0] / later:.1f}x | {(setup + seconds[0]) / later:.1f}x "
                f"| {rate:.1f} | {record['peak_rss_mib']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
