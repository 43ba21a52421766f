"""`make demo` / `python -m mvtec_ad demo`: make the demo set, train each config on each category, print a table.

Every run goes through the real CLI (`python -m mvtec_ad train ...`) in a subprocess, exactly as a
user would type it, and the table is read back from the metrics.json files those runs wrote.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mvtec_ad.data.demo import DEMO_CATEGORIES, make_demo_dataset

DEMO_CONFIGS = ("configs/demo/dfr.yaml", "configs/demo/favae.yaml")


def fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def demo_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m mvtec_ad demo", description=__doc__)
    parser.add_argument("--root", default="datasets/demo", help="where the demo set is (made if missing)")
    parser.add_argument("--configs", nargs="+", default=list(DEMO_CONFIGS))
    parser.add_argument("--categories", nargs="+", default=list(DEMO_CATEGORIES))
    parser.add_argument("--out", default="lightning_logs/demo", help="log folder of the demo runs")
    a = parser.parse_args(argv)

    root = Path(a.root)
    if not all((root / c / "train" / "good").is_dir() for c in a.categories):
        start = time.perf_counter()
        make_demo_dataset(root, a.categories)
        print(f"Demo set written to {root} in {time.perf_counter() - start:.1f} s")

    rows = []
    for config in a.configs:
        name = Path(config).stem
        for category in a.categories:
            run_dir = Path(a.out) / name / category
            cmd = [
                sys.executable,
                "-m",
                "mvtec_ad",
                "train",
                "--config",
                config,
                "--data.root",
                str(root),
                "--data.category",
                category,
                "--trainer.default_root_dir",
                str(run_dir),
                "--trainer.enable_progress_bar",
                "false",
            ]
            print(f"[{len(rows) + 1}/{len(a.configs) * len(a.categories)}] {' '.join(cmd[1:])}", flush=True)
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            latest = max(
                run_dir.glob("lightning_logs/version_*/metrics.json"), key=lambda p: p.stat().st_mtime
            )
            rows.append((name, category, json.loads(latest.read_text()), seconds, latest.parent))

    print()
    print("| detector | category | image AUROC | pixel AUROC | AUPRO | seconds | logs |")
    print("|---|---|---|---|---|---|---|")
    for name, category, m, seconds, log_dir in rows:
        print(
            f"| {name} | {category} | {fmt(m['image_auroc'])} | {fmt(m['pixel_auroc'])} | "
            f"{fmt(m['pixel_aupro'])} | {seconds:.0f} | {log_dir} |"
        )
    print(f"\nTensorBoard: tensorboard --logdir {a.out}")
