"""`python -m mvtec_ad benchmark` on the tiny set: rows and statuses, results.md, resume, errors before runs."""

import csv
import json
import subprocess
from pathlib import Path

import pytest

from mvtec_ad.cli import main
from tests.helpers import REPO, TEST_IMAGE_SIZE, cli

KNN = "configs/demo/knn.yaml"


def broken_config(folder: Path) -> Path:
    """The demo kNN config with a backbone that does not exist: its runs fail while building the model."""
    text = (REPO / KNN).read_text().replace("backbone: efficientnet_lite0", "backbone: no_such_backbone")
    assert "no_such_backbone" in text
    path = folder / "broken.yaml"
    path.write_text(text)
    return path


def benchmark(root: Path, out: Path, categories: str, *configs: str) -> subprocess.CompletedProcess:
    return cli(
        "benchmark",
        "--configs",
        *configs,
        "--data.root",
        str(root),
        "--categories",
        categories,
        "--out",
        str(out),
        "--model.image_size",
        str(TEST_IMAGE_SIZE),
        check=False,
    )


def read_results(path: Path) -> dict[tuple[str, str], dict]:
    """results.csv rows by (config name, category); the mean rows have category 'mean'."""
    with path.open(newline="") as file:
        return {(Path(row["config"]).stem, row["category"]): row for row in csv.DictReader(file)}


def test_benchmark_records_failures_and_resumes_without_redoing_finished_rows(tiny_root, tmp_path):
    out = tmp_path / "bench" / "results.csv"
    first = benchmark(tiny_root, out, "washer", KNN)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "[1/1] knn washer ... ok" in first.stdout
    done = read_results(out)[("knn", "washer")]
    assert done["status"] == "ok" and done["detector"] == "knn"
    washer_metrics = Path(done["run_dir"]) / "metrics.json"
    stamp = washer_metrics.stat().st_mtime_ns

    # every category, and a config whose runs fail: the ok row is skipped, failures are recorded
    broken = str(broken_config(tmp_path))
    second = benchmark(tiny_root, out, "all", KNN, broken)
    assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
    lines = second.stdout.splitlines()
    assert lines[1].startswith("[1/4] knn fabric ... ok ")
    assert lines[2] == f"[2/4] knn washer ... skipped (ok in {out})"
    assert lines[4].startswith("[4/4] broken washer ... failed: Unknown backbone 'no_such_backbone'")
    assert "2/4 runs ok" in second.stdout

    rows = read_results(out)
    assert list(rows) == [
        ("knn", "fabric"),
        ("knn", "washer"),
        ("knn", "mean"),
        ("broken", "fabric"),
        ("broken", "washer"),
        ("broken", "mean"),
    ]
    assert rows[("knn", "washer")] == done  # not redone: same seconds, run dir, numbers
    assert washer_metrics.stat().st_mtime_ns == stamp
    assert not (out.parent / "runs" / "knn" / "washer" / "lightning_logs" / "version_1").exists()

    fabric = rows[("knn", "fabric")]
    assert fabric["status"] == "ok" and fabric["protocol"].startswith("official")
    assert Path(fabric["run_dir"]) == out.parent / "runs" / "knn" / "fabric" / "lightning_logs" / "version_0"
    written = json.loads((Path(fabric["run_dir"]) / "metrics.json").read_text())
    assert float(fabric["image_auroc"]) == pytest.approx(written["image_auroc"])
    assert float(fabric["pixel_aupro"]) == pytest.approx(written["pixel_aupro"])
    assert int(fabric["n_test"]) == written["n_test"] == 12
    assert float(fabric["seconds"]) > 0 and 100 < float(fabric["peak_rss_mb"]) < 8000
    assert fabric["command"] == (
        f"python -m mvtec_ad train --config {KNN} --data.root {tiny_root} --data.category fabric "
        f"--trainer.default_root_dir {out.parent}/runs/knn/fabric --trainer.enable_progress_bar false "
        f"--model.image_size {TEST_IMAGE_SIZE}"
    )
    for category in ("fabric", "washer"):
        failed = rows[("broken", category)]
        assert failed["status"].startswith("failed: Unknown backbone 'no_such_backbone'")
        assert failed["image_auroc"] == "" and failed["detector"] == "broken"
        assert (out.parent / "runs" / "broken" / category / "train.log").is_file()

    mean = rows[("knn", "mean")]
    assert mean["status"] == "mean of 2 ok of 2 categories"
    expected = (float(fabric["image_auroc"]) + float(done["image_auroc"])) / 2
    assert float(mean["image_auroc"]) == pytest.approx(expected)
    assert rows[("broken", "mean")]["status"] == "mean of 0 ok of 2 categories"

    markdown = out.with_suffix(".md").read_text()
    assert f"## knn (`{KNN}`)" in markdown and f"## broken (`{broken}`)" in markdown
    assert f"| knn | `{KNN}` | 2/2 | {float(mean['image_auroc']):.3f} |" in markdown
    assert "| **mean** | mean of 2 ok of 2 categories |" in markdown
    assert fabric["command"] in markdown


def test_benchmark_names_an_unknown_category_before_running(tiny_root, tmp_path, capsys):
    out = tmp_path / "results.csv"
    argv = ["benchmark", "--configs", KNN, "--data.root", str(tiny_root), "--categories", "washer,nope"]
    with pytest.raises(SystemExit) as stop:  # in-process: the same entry point as `python -m mvtec_ad`
        main([*argv, "--out", str(out)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown category 'nope'") and "Categories there: fabric, washer" in err
    assert not out.exists() and not (tmp_path / "runs").exists()
