"""The benchmark's rows without training: CSV round trip, resume, options, categories, peak memory."""

import json
import math
import resource
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mvtec_ad.commands.benchmark import (
    RUN_FOLDER,
    PlannedRun,
    check_configs,
    check_resumable,
    claim_run_folder,
    failure_reason,
    parse_args,
    plan_runs,
    run_benchmark,
    run_child,
    run_row,
)
from mvtec_ad.commands.benchmark_table import (
    is_finished,
    markdown_text,
    read_rows,
    row_key,
    write_results,
)
from mvtec_ad.data.sources.mvtec import resolve_categories
from mvtec_ad.errors import ConfigError, DataError
from tests.helpers import benchmark_row, three_benchmark_rows


def test_csv_round_trip_and_resume_key(tmp_path):
    rows = three_benchmark_rows()
    rows[2]["status"] = 'failed: ValueError: bad "x", y (exit 1)'  # commas and quotes survive
    rows[0] |= {"n_test": 12, "protocol": "official: 20% held out, seed 42", "run_dir": "r/knn/bottle"}
    csv_path = tmp_path / "results.csv"
    write_results(csv_path, rows)

    lines = csv_path.read_text().splitlines()
    assert lines[0].split(",")[:4] == ["detector", "config", "category", "status"]
    assert len(lines) == 1 + 3 + 1 and ',mean,"mean of 2 ok of 3 categories; ' in lines[-1]
    back = read_rows(csv_path)
    assert back == rows  # mean rows are recomputed, never read back
    assert isinstance(back[0]["n_test"], int) and isinstance(back[0]["image_auroc"], float)
    finished = {row_key(row) for row in back if is_finished(row)}
    assert finished == {("configs/knn.yaml", "bottle"), ("configs/knn.yaml", "cable")}
    assert not list(tmp_path.glob("*.tmp"))  # written by rename


def test_a_foreign_csv_is_refused(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("name,value\na,1\n")
    with pytest.raises(ConfigError, match=r"other\.csv' is not a benchmark results file"):
        read_rows(other)


def test_markdown_has_mean_rows_counts_and_commands():
    rows = three_benchmark_rows() + [benchmark_row("bottle", config="configs/dfr.yaml", image_auroc=0.9)]
    text = markdown_text(rows)
    assert "| knn | `configs/knn.yaml` | 2/3 | 0.700 | 0.900 (n=1) | 0.600 (n=1) |" in text
    assert (
        "| **mean** | mean of 2 ok of 3 categories; pixel_auroc over 1, pixel_aupro over 1 | 0.700 |" in text
    )
    assert "| capsule | failed: CUDA out of memory (exit 1) | – |" in text
    assert "python -m mvtec_ad train --config configs/dfr.yaml --data.category bottle" in text
    assert "not directly comparable" in text  # knn covers bottle+cable, dfr bottle only


def test_categories_all_in_mvtec_order_then_sorted_and_unknown_names(tmp_path):
    for name in ("zipper", "custom", "bottle", "aaa"):
        (tmp_path / name / "train" / "good").mkdir(parents=True)
    (tmp_path / "notes").mkdir()  # no train/good: not a category
    assert resolve_categories(str(tmp_path), ["all"]) == ["bottle", "zipper", "aaa", "custom"]
    assert resolve_categories(str(tmp_path), ["zipper,aaa"]) == ["zipper", "aaa"]
    assert resolve_categories(str(tmp_path), ["custom", "bottle"]) == ["custom", "bottle"]
    with pytest.raises(
        DataError, match="Unknown category 'notes' in .*Categories there: bottle, zipper, aaa"
    ):
        resolve_categories(str(tmp_path), ["bottle,notes"])
    with pytest.raises(DataError, match="does not exist"):
        resolve_categories(str(tmp_path / "nope"), ["all"])


def test_configs_must_exist_and_have_distinct_names(tmp_path):
    with pytest.raises(ConfigError, match=r"not found: .*missing\.yaml \(--configs\)"):
        check_configs(["configs/demo/knn.yaml", str(tmp_path / "missing.yaml")])
    (tmp_path / "knn.yaml").write_text("")
    with pytest.raises(ConfigError, match="share the name 'knn'"):
        check_configs(["./configs/demo/knn.yaml", str(tmp_path / "knn.yaml")])
    assert check_configs(["./configs/demo/knn.yaml"]) == ["configs/demo/knn.yaml"]


def test_options_pass_through_to_every_run(tmp_path, capsys):
    argv = [
        "--configs",
        "a.yaml",
        "b.yaml",
        "--data.root",
        "R",
        "--model.image_size",
        "64",
        "--out",
        "o/r.csv",
    ]
    args, overrides = parse_args([*argv, "--trainer.max_epochs=1"])
    assert args.configs == ["a.yaml", "b.yaml"] and args.root == "R" and args.categories == ["all"]
    assert overrides == ["--model.image_size", "64", "--trainer.max_epochs=1"]
    plan = plan_runs(args.configs, "R", ["washer"], tmp_path, overrides)
    assert [run.key for run in plan] == [("a.yaml", "washer"), ("b.yaml", "washer")]
    assert plan[0].run_root == tmp_path / "runs" / "a" / "washer"
    assert (
        plan[0]
        .command_in(plan[0].run_root / "run_0")
        .endswith(
            f"--trainer.default_root_dir {tmp_path}/runs/a/washer/run_0 "
            "--trainer.enable_progress_bar false --model.image_size 64 --trainer.max_epochs=1"
        )
    )
    assert plan[0].command.endswith(
        "--trainer.default_root_dir '<run folder>' "
        "--trainer.enable_progress_bar false --model.image_size 64 --trainer.max_epochs=1"
    )
    for bad, message in [
        (["--data.category", "x"], "--data.category is set by the benchmark"),
        (["--foo", "1"], "unknown option --foo"),
        (["--out", "r.txt"], "name a .csv file"),
    ]:
        with pytest.raises(SystemExit):
            parse_args(["--configs", "a.yaml", "--data.root", "R", *bad])
        assert message in capsys.readouterr().err


def test_a_finished_row_made_by_another_command_stops_the_resume(tmp_path):
    plan = plan_runs(["configs/knn.yaml"], "R", ["bottle"], tmp_path, ["--model.image_size", "64"])
    finished = benchmark_row("bottle", command=plan[0].command_in(plan[0].run_root / "run_3"))
    check_resumable({plan[0].key: finished}, plan, tmp_path / "results.csv")
    changed = plan_runs(["configs/knn.yaml"], "R", ["bottle"], tmp_path, ["--model.image_size", "128"])
    with pytest.raises(ConfigError, match="made by another command"):
        check_resumable({plan[0].key: finished}, changed, tmp_path / "results.csv")
    check_resumable({plan[0].key: finished | {"status": "failed: x"}}, changed, tmp_path / "results.csv")
    # a row from before each run had a folder of its own ran in run_root itself: still the same command
    assert plan[0].made(plan[0].command_in(plan[0].run_root))
    # a folder that is not in this cell's run_root is another command
    elsewhere = plan_runs(["configs/knn.yaml"], "R", ["cable"], tmp_path, ["--model.image_size", "64"])[0]
    assert not plan[0].made(plan[0].command_in(elsewhere.run_root / "run_0"))
    assert not plan[0].made(plan[0].command) and not plan[0].made("python 'unbalanced")


def test_failure_reason_is_the_signal_or_the_last_line():
    assert failure_reason(-9, "anything") == "killed by SIGKILL (out of memory?)"
    log = "Seed set to 42\nTraceback ...\nerror: Unknown backbone 'x'. Use one of ...\n\n"
    assert failure_reason(2, log) == "Unknown backbone 'x'. Use one of ... (exit 2)"
    assert failure_reason(1, "") == "no output (exit 1)"


def test_peak_rss_is_the_runs_own_not_the_benchmarks(tmp_path):
    # this process holds torch etc.: a child spawned straight from it would report this peak as its own
    own_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert own_peak_mb > 150
    small = run_child([sys.executable, "-c", "pass"], tmp_path / "small.log")
    large = run_child([sys.executable, "-c", "b = b'x' * 200_000_000"], tmp_path / "large.log")
    assert small.returncode == 0 and small.peak_rss_mb < 60
    assert 200 < large.peak_rss_mb < 400 and math.isfinite(large.seconds)
    killed = run_child(
        [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], tmp_path / "k.log"
    )
    assert killed.returncode == -9
    failed = run_child(
        [sys.executable, "-c", "print('step'); raise SystemExit('error: boom')"], tmp_path / "f.log"
    )
    assert failed.returncode == 1 and (tmp_path / "f.log").read_text().splitlines() == ["step", "error: boom"]


# stand-ins for `python -m mvtec_ad train`, given the run's own folder: each counts its calls in <run root>/calls
COUNT_CALL = "import json, pathlib, sys\nroot = pathlib.Path(sys.argv[1])\nopen(root.parent / 'calls', 'a').write('x')\n"
WRITE_METRICS = COUNT_CALL + (
    "log = root / 'lightning_logs' / 'version_0'\nlog.mkdir(parents=True, exist_ok=True)\n"
    "metrics = {'detector': 'fake', 'protocol': 'official', 'n_test': 3, 'image_auroc': 0.75, 'pixel_auroc': None}\n"
    "(log / 'metrics.json').write_text(json.dumps(metrics))\n"
)
FAIL = COUNT_CALL + "raise SystemExit('error: no GPU here')\n"


def fake_run(folder, category: str, code: str) -> PlannedRun:
    run_root = folder / "runs" / "fake" / category
    return PlannedRun("fake.yaml", category, run_root, ("-c", code, RUN_FOLDER))


def test_run_benchmark_skips_ok_rows_and_retries_the_others(tmp_path, capsys):
    plan = [
        fake_run(tmp_path, "a", WRITE_METRICS),
        fake_run(tmp_path, "b", FAIL),
        fake_run(tmp_path, "c", COUNT_CALL),
    ]
    csv_path = tmp_path / "results.csv"
    rows = run_benchmark(plan, csv_path)
    log_c = plan[2].run_root / "run_0" / "train.log"
    assert [row["status"] for row in rows] == [
        "ok",
        "failed: no GPU here (exit 1)",
        f"failed: the run wrote no metrics.json (see {log_c})",
    ]
    assert rows[0]["detector"] == "fake" and rows[0]["image_auroc"] == 0.75 and rows[0]["pixel_auroc"] is None
    assert rows[0]["n_test"] == 3 and rows[0]["run_dir"] == str(
        plan[0].run_root / "run_0" / "lightning_logs" / "version_0"
    )
    assert rows[1]["run_dir"] == str(plan[1].run_root / "run_0")
    assert rows[1]["command"] == plan[1].command_in(plan[1].run_root / "run_0")
    first = capsys.readouterr().out.splitlines()
    assert first[0].startswith("[1/3] fake a ... ok ") and "(ETA " in first[0]
    assert first[1].startswith("[2/3] fake b ... failed: no GPU here (exit 1) ")

    again = run_benchmark(plan, csv_path)
    second = capsys.readouterr().out.splitlines()
    assert second[0] == f"[1/3] fake a ... skipped (ok in {csv_path})"
    assert [(run.run_root / "calls").read_text() for run in plan] == ["x", "xx", "xx"]
    assert again[0] == rows[0] and read_rows(csv_path) == again
    # a retried row runs in a new folder; the failed try's log stays where its row pointed
    assert again[1]["run_dir"] == str(plan[1].run_root / "run_1")
    assert (plan[1].run_root / "run_0" / "train.log").read_text().strip() == "error: no GPU here"


def test_each_try_claims_a_new_run_folder(tmp_path):
    root = tmp_path / "runs" / "knn" / "bottle"
    assert claim_run_folder(root) == root / "run_0" and claim_run_folder(root) == root / "run_1"
    (root / "run_7").mkdir()
    (root / "run_x").mkdir()  # not a number: not counted
    assert claim_run_folder(root) == root / "run_8"
    assert sorted(p.name for p in root.iterdir()) == ["run_0", "run_1", "run_7", "run_8", "run_x"]


# A `train` stand-in: waits for the flag `before`, then, like RunLogger, takes the next free
# lightning_logs/version_N of the folder it is given and writes its metrics.json there; a `train`
# by hand in the shared runs/<config>/<category> writes one too; then it raises its own flag and
# waits for the flag `after`, so that both runs are alive at once and the second one's files are newer.
RACING_RUN = """
import json, pathlib, sys, time
folder, flags = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
name, before, after, auroc = sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6])
def wait(flag):
    deadline = time.monotonic() + 30
    while flag != '-' and not (flags / flag).exists():
        assert time.monotonic() < deadline, f'flag {flag} never came'
        time.sleep(0.01)
wait(before)
def write_metrics(root, detector, auroc):
    n = 0
    while True:
        log = root / 'lightning_logs' / f'version_{n}'
        try:
            log.mkdir(parents=True)
            break
        except FileExistsError:
            n += 1
    (log / 'metrics.json').write_text(json.dumps({'detector': detector, 'image_auroc': auroc}))
write_metrics(folder, name, auroc)
write_metrics(folder.parent, 'by hand', 0.99)
(flags / name).touch()
wait(after)
print(f'run {name} done')
"""


def test_benchmarks_beside_each_other_each_record_their_own_run(tmp_path):
    # two benchmarks whose --out share a folder (a.csv, b.csv): the same config and category, other
    # model options, run at once; each row must name its own run and hold that run's numbers
    run_root, flags = tmp_path / "runs" / "fake" / "bottle", tmp_path / "flags"
    flags.mkdir()

    def planned(name: str, before: str, after: str, auroc: str) -> PlannedRun:
        args = ("-c", RACING_RUN, RUN_FOLDER, str(flags), name, before, after, auroc)
        return PlannedRun("fake.yaml", "bottle", run_root, args)

    plan_a, plan_b = planned("a", "-", "b", "0.25"), planned("b", "a", "-", "0.5")
    with ThreadPoolExecutor(2) as pool:  # b writes its metrics.json while a still runs
        row_a, row_b = pool.map(run_row, [plan_a, plan_b])

    assert row_a["status"] == row_b["status"] == "ok"
    assert (row_a["detector"], row_a["image_auroc"]) == ("a", 0.25)
    assert (row_b["detector"], row_b["image_auroc"]) == ("b", 0.5)
    assert row_a["run_dir"] != row_b["run_dir"]
    for row, plan in [(row_a, plan_a), (row_b, plan_b)]:
        run_dir = Path(row["run_dir"])
        folder = run_dir.parents[1]
        assert run_dir == folder / "lightning_logs" / "version_0" and folder.parent == run_root
        assert json.loads((run_dir / "metrics.json").read_text())["detector"] == row["detector"]
        assert row["command"] == plan.command_in(folder)
        assert (folder / "train.log").read_text() == f"run {row['detector']} done\n"
    assert {Path(row["run_dir"]).parents[1].name for row in (row_a, row_b)} == {"run_0", "run_1"}
