"""`make demo` / `python -m mvtec_ad demo`: make the demo set, benchmark the demo configs on it, print the table.

The demo is a `benchmark` run (mvtec_ad/commands/benchmark.py) over the demo set: every run goes through
the real CLI (`python -m mvtec_ad train ...`) in a subprocess, exactly as a user would type it,
rerunning resumes, and results.csv / results.md land in the output folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mvtec_ad.commands.benchmark import check_configs, plan_runs, run_benchmark
from mvtec_ad.commands.benchmark_table import markdown_path
from mvtec_ad.data.demo_set import DEMO_CATEGORIES, make_demo_dataset
from mvtec_ad.evaluation.results_table import OK

DEMO_CONFIGS = ("configs/demo/dfr.yaml", "configs/demo/favae.yaml")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m mvtec_ad demo", description=__doc__)
    parser.add_argument("--root", default="datasets/demo", help="where the demo set is (made if missing)")
    parser.add_argument("--configs", nargs="+", default=list(DEMO_CONFIGS))
    parser.add_argument("--categories", nargs="+", default=list(DEMO_CATEGORIES))
    parser.add_argument("--out", default="lightning_logs/demo", help="folder of the runs and results files")
    a = parser.parse_args(argv)

    root = Path(a.root)
    if not all((root / c / "train" / "good").is_dir() for c in a.categories):
        start = time.perf_counter()
        make_demo_dataset(root, a.categories)
        print(f"Demo set written to {root} in {time.perf_counter() - start:.1f} s")

    csv_path = Path(a.out) / "results.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    plan = plan_runs(check_configs(a.configs), str(root), a.categories, csv_path.parent, [])
    rows = run_benchmark(plan, csv_path)
    print()
    print(markdown_path(csv_path).read_text())
    print(f"TensorBoard: tensorboard --logdir {csv_path.parent / 'runs'}")
    if any(row["status"] != OK for row in rows):
        sys.exit(1)
