"""The demo's promise, at full demo size (slow: run with `make test-slow`)."""

import csv
import json

import pytest

from mvtec_ad.commands.demo import main as demo_main
from mvtec_ad.data.demo_set import DEMO_CATEGORIES


@pytest.mark.slow
def test_demo_dfr_reaches_auroc_095_on_every_category(tmp_path, capsys):
    demo_main(["--root", str(tmp_path / "demo"), "--out", str(tmp_path / "logs")])
    table = capsys.readouterr().out
    rows = {(r["config"], r["category"]): r for r in csv.DictReader(open(tmp_path / "logs" / "results.csv"))}
    for category in DEMO_CATEGORIES:
        metrics_files = list((tmp_path / "logs" / "runs" / "dfr" / category).rglob("metrics.json"))
        assert len(metrics_files) == 1
        metrics = json.loads(metrics_files[0].read_text())
        assert metrics["image_auroc"] >= 0.95, (category, metrics)
        assert metrics["pixel_auroc"] >= 0.9, (category, metrics)
        row = rows[("configs/demo/dfr.yaml", category)]
        assert row["status"] == "ok" and float(row["image_auroc"]) == pytest.approx(metrics["image_auroc"])
        assert f"| {category} | ok |" in table
