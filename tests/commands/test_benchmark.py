"""`python -m mvtec_ad benchmark` on the tiny set: rows and statuses, results.md, resume, errors before runs."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mvtec_ad.cli import main
from mvtec_ad.commands.benchmark import results_lock, run_benchmark
from mvtec_ad.errors import ConfigError
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
    assert not (out.parent / "runs" / "knn" / "washer" / "run_1").exists()

    fabric = rows[("knn", "fabric")]
    assert fabric["status"] == "ok" and fabric["protocol"].startswith("official")
    fabric_folder = out.parent / "runs" / "knn" / "fabric" / "run_0"  # the run's own (claim_run_folder)
    assert Path(fabric["run_dir"]) == fabric_folder / "lightning_logs" / "version_0"
    written = json.loads((Path(fabric["run_dir"]) / "metrics.json").read_text())
    assert float(fabric["image_auroc"]) == pytest.approx(written["image_auroc"])
    assert float(fabric["pixel_aupro"]) == pytest.approx(written["pixel_aupro"])
    assert int(fabric["n_test"]) == written["n_test"] == 12
    assert float(fabric["seconds"]) > 0 and 100 < float(fabric["peak_rss_mb"]) < 8000
    assert fabric["command"] == (
        f"python -m mvtec_ad train --config {KNN} --data.root {tiny_root} --data.category fabric "
        f"--trainer.default_root_dir {fabric_folder} --trainer.enable_progress_bar false "
        f"--model.image_size {TEST_IMAGE_SIZE}"
    )
    for category in ("fabric", "washer"):
        failed = rows[("broken", category)]
        assert failed["status"].startswith("failed: Unknown backbone 'no_such_backbone'")
        assert failed["image_auroc"] == "" and failed["detector"] == "broken"
        assert failed["run_dir"] == str(out.parent / "runs" / "broken" / category / "run_0")
        assert (out.parent / "runs" / "broken" / category / "run_0" / "train.log").is_file()

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

    # results.html links each ok run's report page, which the run wrote, and each failed run's log
    page = out.with_suffix(".html").read_text()
    report = "runs/knn/fabric/run_0/lightning_logs/version_0/report/index.html"
    assert f'href="{report}"' in page and (out.parent / report).is_file()
    assert 'href="runs/broken/washer/run_0/train.log"' in page


def test_benchmark_names_an_unknown_category_before_running(tiny_root, tmp_path, capsys):
    out = tmp_path / "results.csv"
    argv = ["benchmark", "--configs", KNN, "--data.root", str(tiny_root), "--categories", "washer,nope"]
    with pytest.raises(SystemExit) as stop:  # in-process: the same entry point as `python -m mvtec_ad`
        main([*argv, "--out", str(out)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown category 'nope'") and "Categories there: fabric, washer" in err
    assert not out.exists() and not (tmp_path / "runs").exists()


def process_gone(pid: int) -> bool:
    """True when `pid` no longer runs (a zombie left for a non-reaping init counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in state


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_benchmark_killed_by_sigkill_leaves_no_run_and_no_lock_behind(tmp_path):
    csv_path, pid_file = tmp_path / "results.csv", tmp_path / "run.pid"
    run = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from mvtec_ad.commands.benchmark import results_lock, run_child\n"
        f"with results_lock(Path({str(csv_path)!r})):\n"
        f"    run_child([sys.executable, '-c', {run!r}], Path({str(tmp_path / 'train.log')!r}))\n"
    )
    benchmark = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    deadline = time.monotonic() + 120
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.monotonic() < deadline and benchmark.poll() is None, "the run never started"
        time.sleep(0.2)
    run_pid = int(pid_file.read_text())
    benchmark.send_signal(signal.SIGKILL)
    benchmark.wait()
    deadline = time.monotonic() + 20
    while not process_gone(run_pid):
        assert time.monotonic() < deadline, "the run outlived its benchmark"
        time.sleep(0.2)
    assert run_benchmark([], csv_path) == []  # the dead benchmark's lock is gone with it


def test_a_second_benchmark_on_the_same_out_is_refused(tmp_path):
    csv_path = tmp_path / "results.csv"
    with results_lock(csv_path):
        with pytest.raises(
            ConfigError, match=rf"Another benchmark \(pid {os.getpid()}\) is running on '{csv_path}'"
        ):
            run_benchmark([], csv_path)
    assert run_benchmark([], csv_path) == [] and not (tmp_path / "results.csv.lock").exists()


def test_a_failed_run_whose_folder_was_removed_is_a_failed_row_not_a_crash(tmp_path, monkeypatch):
    """Someone removed the run's folder (its train.log with it) while it ran: the row says failed."""
    import shutil

    from mvtec_ad.commands import benchmark

    def vanished(cmd, log_path):
        shutil.rmtree(log_path.parent)
        return benchmark.ChildRun(returncode=1, seconds=0.5, peak_rss_mb=None)

    monkeypatch.setattr(benchmark, "run_child", vanished)
    run = benchmark.PlannedRun(
        KNN, "washer", tmp_path / "runs", ("-m", "mvtec_ad", "train", benchmark.RUN_FOLDER)
    )
    row = benchmark.run_row(run)
    assert row["status"] == "failed: no output (exit 1)" and row["category"] == "washer"
