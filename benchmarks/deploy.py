"""Deployment runtimes against the checkpoint: speed, size, accuracy and parity, one row per runtime.

    python benchmarks/deploy.py --root /tmp/panel --category magnetic_tile --out /tmp/deploy
    python benchmarks/deploy.py --root /tmp/dep/tiny --category washer --out /tmp/deploy_tiny \
        --image_size 64 --max_epochs 1 --limit 8 --subset_size 8        # a quick run that shows it works

For each config (patchcore squash 224, the keep_aspect default configs/demo/patchcore.yaml, dfr,
pixel_ae) the detector is fitted once with `python -m mvtec_ad fit` (resumed: a checkpoint in --out is
kept), exported to ONNX and to OpenVINO FP32, FP16 and INT8 (NNCF, --subset_size training normals),
and every file is run by mvtec_ad.deploy.Inferencer on the test split (the checkpoint itself through
the same Inferencer, i.e. torch):

  batch-1 ms         median time of one image through the runtime (placed input; decode excluded), 20
                     images x 3 rounds, the config's runtimes taken in turn image by image
  images/s           the whole test split through Inferencer.predict (decode, placement, model,
                     map restore), batches of 8
  cold start s       a fresh `python -c` process: import, load the file, score one image
  MB                 the file(s) on disk (.xml + .bin)
  image / pixel AUROC  scores vs labels; maps at each image's own size vs its mask (every 4th pixel)
  max |Δscore|       max over the test images of |score - checkpoint score|, and relative to the
                     largest checkpoint score
  labels agree       share of images labelled as the checkpoint labels them at its threshold

The checkpoint of a memory-bank detector (patchcore) runs twice: with its banks searched exactly
in float32, as every exported graph searches them (the reference of the last two columns), and
with its own `--model.search` (auto: ivf on large banks), as `test` runs it: that row shows what
the approximate search moves, not the export.

Runs on the CPU cores this process may use (--threads, default all of them); prints a markdown table
and writes it to <out>/deploy.md. Targets (issue 32): FP32 runtimes within 1e-4 relative of the
checkpoint and agreeing on every label; INT8 within 0.005 image AUROC of FP32 and faster at batch 1;
ONNX patchcore cold start < 2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = {  # name -> (config, extra fit options)
    "patchcore squash 224": (
        "configs/demo/patchcore.yaml",
        ("--model.resize", "squash", "--model.image_size", "224"),
    ),
    "patchcore keep_aspect (default)": ("configs/demo/patchcore.yaml", ()),
    "dfr": ("configs/demo/dfr.yaml", ()),
    "pixel_ae": ("configs/demo/pixel_ae.yaml", ()),
}
EXACT = "checkpoint (torch, exact search)"  # what every export computes: the reference of the parity columns
RUNTIMES = (EXACT, "checkpoint (torch)", "onnxruntime", "OpenVINO FP32", "OpenVINO FP16", "OpenVINO INT8")
COLD_START = """
import sys, time
start = time.perf_counter()
from mvtec_ad.deploy import Inferencer
Inferencer(sys.argv[1], threads=int(sys.argv[3]))(sys.argv[2])
print(time.perf_counter() - start)
"""


def fit(name: str, args: argparse.Namespace) -> Path:
    """The config fitted on the category (an existing checkpoint under --out is kept)."""
    config, extra = CONFIGS[name]
    run = args.out / name.split(" (")[0].replace(" ", "_")
    found = sorted(run.glob("lightning_logs/version_*/checkpoints/*.ckpt"))
    if not found:
        command = [
            sys.executable, "-m", "mvtec_ad", "fit", "--config", config, "--data.root", str(args.root),
            "--data.category", args.category, "--trainer.default_root_dir", str(run),
            "--trainer.enable_progress_bar", "false", *extra,
        ]  # fmt: skip
        if args.image_size:
            command += ["--model.image_size", str(args.image_size)]
        if args.max_epochs:
            command += ["--trainer.max_epochs", str(args.max_epochs)]
        subprocess.run(command, check=True, cwd=REPO)
        found = sorted(run.glob("lightning_logs/version_*/checkpoints/*.ckpt"))
    named = {p.name: p for p in found}
    return named.get("best.ckpt") or named.get("model.ckpt") or found[-1]


def export_all(name: str, checkpoint: Path, args: argparse.Namespace) -> dict[str, Path]:
    """runtime -> file: the checkpoint, and its exports (kept when already written)."""
    from mvtec_ad.commands.export import main as export_main

    config = CONFIGS[name][0]
    files = {EXACT: checkpoint, "checkpoint (torch)": checkpoint}
    for runtime, suffix, options in (
        ("onnxruntime", ".onnx", ["--format", "onnx"]),
        ("OpenVINO FP32", ".xml", ["--format", "openvino"]),
        ("OpenVINO FP16", ".fp16.xml", ["--format", "openvino", "--fp16"]),
        (
            "OpenVINO INT8",
            ".int8.xml",
            ["--format", "openvino", "--int8", "--subset_size", str(args.subset_size)],
        ),
    ):
        out = checkpoint.with_suffix(suffix)
        if not out.is_file():
            export_main(["--config", config, "--ckpt_path", str(checkpoint), "--out", str(out), *options])
        files[runtime] = out
    return files


def test_samples(checkpoint: Path, limit: int | None) -> list:
    """The checkpoint's own test split (its DataModule's hyperparameters), evenly thinned to `limit`."""
    from mvtec_ad.checkpoints import read_checkpoint
    from mvtec_ad.data import AnomalyDataModule

    hparams = {
        k: v
        for k, v in read_checkpoint(checkpoint)["datamodule_hyper_parameters"].items()
        if not k.startswith("_")
    }
    data = AnomalyDataModule(**hparams)
    data.setup("test")
    samples = list(data.splits.test)
    if limit and limit < len(samples):
        samples = (
            [samples[round(i * (len(samples) - 1) / (limit - 1))] for i in range(limit)]
            if limit > 1
            else samples[:1]
        )
    return samples


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None


def open_runtime(path: Path, threads: int, exact: bool = False):
    """An Inferencer for the file; `exact`: the checkpoint with its memory banks searched exactly in
    float32, as the exported graphs search them (None for a detector without a bank)."""
    from mvtec_ad.deploy import Inferencer

    inferencer = Inferencer(path, threads=threads)
    if exact:
        from mvtec_ad.search.bank import BankSearch

        model = inferencer.runtime.module.model
        searches = [
            name for name in ("search", "coarse_search") if isinstance(getattr(model, name, None), BankSearch)
        ]
        if not searches:
            return None
        for name in searches:
            setattr(model, name, BankSearch("exact_fp32"))
    return inferencer


def batch1_latencies(
    inferencers: dict, paths: list[str], images: int = 20, rounds: int = 3
) -> dict[str, float]:
    """Median ms of one placed image per runtime, the runtimes taken in turn image by image: a machine
    whose speed drifts (it did, by a third within an hour) slows them all alike."""
    placed = [next(iter(inferencers.values())).place(p) for p in paths[: min(len(paths), images)]]
    times: dict[str, list[float]] = {name: [] for name in inferencers}
    for inferencer in inferencers.values():
        inferencer.run(placed[0].image[None], np.array([placed[0].content]))  # warm-up
    for _ in range(rounds):
        for item in placed:
            for name, inferencer in inferencers.items():
                start = time.perf_counter()
                inferencer.run(item.image[None], np.array([item.content]))
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def measure(inferencer, path: Path, samples: list, threads: int) -> dict:
    """One runtime's numbers on the samples, but batch-1 latency (batch1_latencies)."""
    from mvtec_ad.data.decode import decode_mask

    paths = [str(s.path) for s in samples]
    start = time.perf_counter()
    results = inferencer(paths)
    seconds = time.perf_counter() - start
    labels = np.array([int(s.label != 0) for s in samples])
    scores = np.array([r.score for r in results])
    pixel_scores, pixel_truth = [], []
    for sample, result in zip(samples, results, strict=True):
        mask = decode_mask(sample.mask_path) if sample.mask_path else np.zeros(result.map.shape, np.uint8)
        pixel_scores.append(result.map[::4, ::4].ravel())  # every 4th pixel: the AUROC, not its last digit
        pixel_truth.append(mask[::4, ::4].ravel())
    cold = subprocess.run(
        [sys.executable, "-c", COLD_START, str(path), paths[0], str(threads)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    files = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])
    return {
        "images_s": len(paths) / seconds,
        "cold_s": float(cold.stdout.strip().splitlines()[-1]),
        "mb": sum(f.stat().st_size for f in files) / 1e6,
        "image_auroc": auroc(labels, scores),
        "pixel_auroc": auroc(np.concatenate(pixel_truth), np.concatenate(pixel_scores)),
        "scores": scores,
        "labels": np.array([r.label if r.label is not None else -1 for r in results]),
    }


def number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="data root (MVTec layout), e.g. /tmp/panel")
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--out", type=Path, required=True, help="runs, checkpoints, exports and deploy.md")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="NAME")
    parser.add_argument("--limit", type=int, help="test images (evenly spread); default all")
    parser.add_argument("--subset_size", type=int, default=300, help="INT8 calibration images")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--image_size", type=int, help="override every config's canvas (quick runs only)")
    parser.add_argument("--max_epochs", type=int, help="override the configs' epochs (quick runs only)")
    args = parser.parse_args()
    from mvtec_ad.search import cpu

    lines = [
        f"{args.category}, {args.limit or 'all'} test images, {args.threads} threads; {cpu.describe()}",
        "",
        "| config | runtime | batch-1 ms | images/s | cold start s | MB | image AUROC | pixel AUROC "
        "| max abs Δscore (rel) | labels agree |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.configs:
        checkpoint = fit(name, args)
        files = export_all(name, checkpoint, args)
        samples = test_samples(checkpoint, args.limit)
        opened = {
            runtime: open_runtime(files[runtime], args.threads, runtime == EXACT) for runtime in RUNTIMES
        }
        inferencers = {
            runtime: inferencer for runtime, inferencer in opened.items() if inferencer is not None
        }
        latency = batch1_latencies(inferencers, [str(s.path) for s in samples])
        reference = None
        for runtime, inferencer in inferencers.items():
            row = measure(inferencer, files[runtime], samples, args.threads) | {
                "latency_ms": latency[runtime]
            }
            reference = reference or row
            delta = np.abs(row["scores"] - reference["scores"])
            relative = float(delta.max() / max(np.abs(reference["scores"]).max(), 1e-12))
            agree = float((row["labels"] == reference["labels"]).mean())
            lines.append(
                f"| {name} | {runtime} | {row['latency_ms']:.1f} | {row['images_s']:.1f} | {row['cold_s']:.2f} "
                f"| {row['mb']:.1f} | {number(row['image_auroc'])} | {number(row['pixel_auroc'])} "
                f"| {delta.max():.3g} ({relative:.1e}) | {agree:.3f} |"
            )
            print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deploy.md").write_text(table)
    print()
    print(table)


if __name__ == "__main__":
    main()
