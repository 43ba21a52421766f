"""Threshold methods x detectors x sets: how close an operating threshold fitted without defects comes.

    python benchmarks/panel.py --out /tmp/panel --magnetic_tile ../shared/data/magnetic_tile
    python benchmarks/thresholds.py --root /tmp/panel --out /tmp/thresholds

For each (detector, set) the detector's demo config is fitted once (`python -m mvtec_ad fit`,
resumed when its checkpoint exists). The checkpoint then scores, in this process, the normal
validation images (official protocol: 20% of train/good), the same images under protocol (ii)
(synthetic anomalies on 75% of them, for the f1 rows, which need anomalies) and the test split.
Every threshold method is fitted on validation data only (mvtec_ad.evaluation.thresholds, the
code `train` runs) and judged on test by AnomalyMetrics (the code `test` runs):

    image F1 / F1 max   F1 at the image threshold, as a share of the best F1 any threshold
                        reaches on test (an oracle, fitted on test)
    SegF1 / F1 max      the pooled pixel F1 at the pixel threshold, as a share of the pixel F1 max
    false alarms        the share of test normals flagged, against the rate asked for
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mvtec_ad.checkpoints import load_detector, read_checkpoint  # noqa: E402
from mvtec_ad.commands.export import detector_class, read_config  # noqa: E402
from mvtec_ad.data import AnomalyDataModule  # noqa: E402
from mvtec_ad.evaluation.evaluator import map_summary, pixel_inputs  # noqa: E402
from mvtec_ad.evaluation.metrics import AnomalyMetrics, label_regions  # noqa: E402
from mvtec_ad.evaluation.thresholds import ThresholdConfig, fit_pixel_threshold, fit_threshold  # noqa: E402
from mvtec_ad.search import cpu  # noqa: E402

DETECTORS = ("patchcore", "dfr")
SETS = ("magnetic_tile", "fabric_strips")
# method name -> (image rule, pixel rule); f1 rows are fitted on protocol (ii)'s synthetic validation
METHODS: dict[str, ThresholdConfig | str] = {
    "fpr 0.05 / quantile 0.99 x 1.0 (default)": ThresholdConfig(),
    "fpr 0.01 / quantile 0.99 x 1.0": ThresholdConfig(fpr=0.01),
    "fpr 0.1 / quantile 0.99 x 1.0": ThresholdConfig(fpr=0.1),
    "fpr 0.01 / fpr 0.01 of map peaks": ThresholdConfig(fpr=0.01, pixel_method="fpr"),
    "mean_std 3 / quantile 0.95 x 1.4": ThresholdConfig("mean_std", pixel_quantile=0.95, pixel_margin=1.4),
    "f1 on synthetic validation (image and pixel)": "f1",
}


@dataclass
class Scored:
    """Scores and labels of a split; map peaks and pixel samples of its normals, or its pixel masks."""

    scores: torch.Tensor
    labels: torch.Tensor
    peaks: torch.Tensor | None = None
    samples: torch.Tensor | None = None


def fit(detector: str, category: str, args: argparse.Namespace) -> Path:
    """The demo config fitted on `category` (resumed: an existing checkpoint is kept)."""
    run = args.out / detector / category
    checkpoints = sorted(run.glob("lightning_logs/version_*/checkpoints/*.ckpt"))
    if not checkpoints:
        command = [
            sys.executable, "-m", "mvtec_ad", "fit", "--config", str(REPO / "configs/demo" / f"{detector}.yaml"),
            "--data.root", str(args.root), "--data.category", category,
            "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
        ]  # fmt: skip
        subprocess.run(command, check=True, cwd=REPO)
        checkpoints = sorted(run.glob("lightning_logs/version_*/checkpoints/*.ckpt"))
    named = {p.name: p for p in checkpoints}
    return named.get("best.ckpt") or named.get("model.ckpt") or checkpoints[-1]


def score_validation(module, data: AnomalyDataModule) -> Scored:
    scores, labels, peaks, samples = [], [], [], []
    with torch.no_grad():
        for batch in data.val_dataloader():
            out = module.detect_batch(batch)
            scores.append(out.score)
            labels.append(batch.label)
            peak, sample = map_summary(out.map, batch)
            peaks.append(peak)
            samples.append(sample)
    return Scored(torch.cat(scores), torch.cat(labels), torch.cat(peaks), torch.cat(samples))


def synthetic_pixel_f1_threshold(module, data: AnomalyDataModule) -> float:
    """The pixel threshold with the best pooled F1 on protocol (ii)'s synthetic validation masks."""
    maps, regions = [], []
    with torch.no_grad():
        for batch in data.val_dataloader():
            out = module.detect_batch(batch)
            parts, masks, _ = pixel_inputs(out.map, batch)
            for m, mask in zip(parts, masks, strict=True):
                maps.append(m.flatten())
                regions.append(label_regions((mask > 0.5).reshape(m.shape))[0].flatten())
    scores, ids = torch.cat(maps), torch.cat(regions)
    values = torch.unique(torch.quantile(scores[::97].double(), torch.linspace(0.5, 1.0, 400).double()))
    defective = ids >= 0
    best, best_t = -1.0, float("nan")
    for t in values.tolist():
        predicted = scores >= t
        tp = int((predicted & defective).sum())
        f1 = 2 * tp / (int(predicted.sum()) + int(defective.sum()))
        if f1 > best:
            best, best_t = f1, t
    return best_t


def evaluate(detector: str, category: str, args: argparse.Namespace) -> list[dict]:
    ckpt = fit(detector, category, args)
    config_path = REPO / "configs/demo" / f"{detector}.yaml"
    module = load_detector(detector_class(read_config(config_path), config_path), read_checkpoint(ckpt), ckpt)
    data_args = read_config(config_path)["data"]["init_args"]
    common = {
        "root": args.root, "category": category, "eval_batch_size": 16, "val_split": data_args.get("val_split", 0.2),
        "seed": data_args.get("seed", 42),
    }  # fmt: skip
    official = AnomalyDataModule(**common)
    official.bind_input(module.geometry)
    official.setup("fit")
    synthetic = AnomalyDataModule(**common, protocol="synthetic")
    synthetic.bind_input(module.geometry)
    synthetic.setup("fit")
    val = score_validation(module, official)
    normal = val.labels == 0
    syn = score_validation(module, synthetic)
    metrics = AnomalyMetrics(pixel=True, compute_with_cache=False)  # computed once per method
    with torch.no_grad():
        for batch in official.test_dataloader():
            out = module.detect_batch(batch)
            maps, masks, _ = pixel_inputs(out.map, batch)
            metrics.update(out.score, batch.label, maps, masks, batch.index)
    rows = []
    for name, method in METHODS.items():
        if method == "f1":
            image = fit_threshold(syn.scores, syn.labels, ThresholdConfig("f1"))
            pixel = synthetic_pixel_f1_threshold(module, synthetic)
            asked = None
        else:
            image = fit_threshold(val.scores, None, method)
            pixel = fit_pixel_threshold(val.peaks[normal], val.samples[normal], method)
            asked = method.fpr if method.method == "fpr" else None
        m = metrics.compute(image, pixel)
        rows.append(
            {
                "detector": detector, "set": category, "method": name, "n_val": int(normal.sum()),
                "image_f1": m["f1"], "image_f1_max": m["image_f1_max"], "recall": m["recall"],
                "seg_f1": m["seg_f1"], "pixel_f1_max": m["pixel_f1_max"],
                "false_alarm_rate": m["false_alarm_rate"], "asked": asked,
            }
        )  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    head = [
        "detector",
        "set",
        "method",
        "image F1 / F1 max",
        "recall",
        "SegF1 / pixel F1 max",
        "false alarms (asked)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:

        def share(a, b):
            return "-" if a is None or not b else f"{a:.3f} / {b:.3f} = **{a / b:.2f}**"

        asked = f" ({r['asked']:g})" if r["asked"] is not None else ""
        alarms = "-" if r["false_alarm_rate"] is None else f"{r['false_alarm_rate']:.3f}{asked}"
        recall = "-" if r["recall"] is None else f"{r['recall']:.2f}"
        cells = [r["detector"], r["set"], r["method"], share(r["image_f1"], r["image_f1_max"]), recall,
                 share(r["seg_f1"], r["pixel_f1_max"]), alarms]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the panel (benchmarks/panel.py --out)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    args = parser.parse_args()
    rows = [row for d in args.detectors for s in args.sets for row in evaluate(d, s, args)]
    print(
        f"\nthreshold methods on {args.root}; cpu: {cpu.describe()}; validation = 20% of train/good, seed 42\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
