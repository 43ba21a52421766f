"""`python -m mvtec_ad benchmark`: train and test every config on every category; results.csv, .md, .html.

    python -m mvtec_ad benchmark --configs configs/dfr.yaml configs/patchcore.yaml \\
        --data.root datasets/mvtec --categories all --out results/results.csv [--trainer.max_epochs 50 ...]

Each (config, category) runs as its own `python -m mvtec_ad train ...` subprocess, the command a
user would type, recorded in its row: a crash, OOM or CUDA error fails that row only, and the
peak memory is that run's own. Each run gets a fresh folder of its own, runs/<config>/<category>/run_<N>
(claim_run_folder), and its row reads metrics.json from that folder only: benchmarks whose --out
share a folder, run at once, never record each other's runs. Rerunning the same command resumes:
rows already `ok` in the CSV are skipped, failed and missing ones run (each in a new run_<N>).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mvtec_ad.commands.benchmark_table import (
    is_finished,
    markdown_path,
    read_rows,
    row_key,
    write_results,
)
from mvtec_ad.data.sources.mvtec import resolve_categories
from mvtec_ad.errors import ConfigError
from mvtec_ad.evaluation.results_table import COLUMNS, METRIC_COLUMNS, OK, Row
from mvtec_ad.progress import steps
from mvtec_ad.report.files import claim_numbered_folder
from mvtec_ad.report.results_page import html_path

PASS_THROUGH_PREFIXES = ("--data.", "--trainer.", "--model.", "--seed_everything")
SET_BY_BENCHMARK = {
    "--data.category": "choose categories with --categories",
    "--trainer.default_root_dir": "runs go to <folder of --out>/runs/<config name>/<category>/run_<N>",
}
# In PlannedRun.args: where the folder each run claims for itself goes (claim_run_folder, run_row).
RUN_FOLDER = "<run folder>"
MAXRSS_PER_MB = 2**20 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux


@dataclass(frozen=True)
class PlannedRun:
    """One (config, category) cell of the benchmark and the `python -m mvtec_ad train` run that fills it.

    Every try at the cell runs in a new folder of run_root (claim_run_folder): `args` hold RUN_FOLDER
    where that folder goes, and args_in / command_in put it there.
    """

    config: str
    category: str
    run_root: Path  # runs/<config>/<category>: the cell's tries, one run_<N> folder each
    args: tuple[str, ...]  # everything after `python`, RUN_FOLDER for the try's folder

    @property
    def key(self) -> tuple[str, str]:
        return self.config, self.category

    @property
    def command(self) -> str:
        """The command with RUN_FOLDER still in it (what any try runs, but for its folder)."""
        return shlex.join(["python", *self.args])

    def args_in(self, folder: Path) -> tuple[str, ...]:
        return tuple(str(folder) if arg == RUN_FOLDER else arg for arg in self.args)

    def command_in(self, folder: Path) -> str:
        """The command the try in `folder` runs, as its row records it."""
        return shlex.join(["python", *self.args_in(folder)])

    def made(self, command: str) -> bool:
        """Whether a row's `command` is this run's, in whichever folder of run_root it ran.

        run_root itself counts too: rows written before each try had a folder of its own named it.
        """
        try:
            words, expected = shlex.split(command), ["python", *self.args]
        except ValueError:  # unbalanced quotes: not a command this benchmark wrote
            return False
        return len(words) == len(expected) and all(
            self.run_root in (Path(word), Path(word).parent) if arg == RUN_FOLDER else word == arg
            for word, arg in zip(words, expected, strict=True)
        )


@dataclass(frozen=True)
class ChildRun:
    returncode: int
    seconds: float
    peak_rss_mb: float | None


# ---- options -----------------------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The benchmark's own options, and the pass-through options (--data.* etc.) given to every run."""
    parser = argparse.ArgumentParser(
        prog="python -m mvtec_ad benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --data.r must not silently become --data.root
        epilog=f"Options starting with {', '.join(PASS_THROUGH_PREFIXES)} go to every run "
        "(e.g. --model.image_size 64 --trainer.max_epochs 1).",
    )
    parser.add_argument("--configs", nargs="+", required=True, metavar="YAML", help="one config per detector")
    parser.add_argument(
        "--data.root", dest="root", required=True, help="folder that holds the category folders"
    )
    parser.add_argument(
        "--categories",
        nargs="+",
        default=["all"],
        help="all (every category folder, MVTec's official order first; default) or names: a,b or a b",
    )
    parser.add_argument(
        "--out",
        default="results.csv",
        help="results CSV (default results.csv); results.md and results.html (a page linking each run's report) are written beside it, the runs under <its folder>/runs",
    )
    args, overrides = parser.parse_known_args(argv)
    problem = pass_through_problem(overrides)
    if problem:
        parser.error(problem)
    if Path(args.out).suffix != ".csv":
        parser.error(f"--out {args.out}: name a .csv file (results.md is written beside it)")
    return args, overrides


def pass_through_problem(overrides: Sequence[str]) -> str | None:
    """Why `overrides` cannot be passed to the runs, or None when they can."""
    if overrides and not overrides[0].startswith("--"):
        return f"unexpected argument '{overrides[0]}'"
    for token in overrides:
        name = token.split("=", 1)[0]
        if not token.startswith("--"):
            continue  # the value of the option before it
        if name in SET_BY_BENCHMARK:
            return f"{name} is set by the benchmark for each run: {SET_BY_BENCHMARK[name]}"
        if not name.startswith(PASS_THROUGH_PREFIXES):
            return f"unknown option {name} (only options starting with {', '.join(PASS_THROUGH_PREFIXES)} go to the runs)"
    return None


def check_configs(configs: Sequence[str]) -> list[str]:
    """The config paths, normalised; every file must exist and names must differ (they name the run folders)."""
    paths = [os.path.normpath(c) for c in configs]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise ConfigError(
            f"Config file(s) not found: {', '.join(missing)} (--configs). Pass YAML files, e.g. configs/demo/knn.yaml."
        )
    clashes = [stem for stem, n in Counter(Path(p).stem for p in paths).items() if n > 1]
    if clashes:
        same = [p for p in paths if Path(p).stem == clashes[0]]
        raise ConfigError(
            f"--configs {' and '.join(same)} share the name '{clashes[0]}', so their runs would share one "
            f"folder (runs/{clashes[0]}). List a config once; copy one to another file name to compare both."
        )
    return paths


def plan_runs(
    configs: Sequence[str], root: str, categories: Sequence[str], out_dir: Path, overrides: Sequence[str]
) -> list[PlannedRun]:
    """Every (config, category) run in table order; the user's options come last, so they win."""
    plan = []
    for config in configs:
        for category in categories:
            run_root = out_dir / "runs" / Path(config).stem / category
            args = ("-m", "mvtec_ad", "train", "--config", config, "--data.root", root)
            args += ("--data.category", category, "--trainer.default_root_dir", RUN_FOLDER)
            args += ("--trainer.enable_progress_bar", "false", *overrides)
            plan.append(PlannedRun(config, category, run_root, args))
    return plan


# ---- running -----------------------------------------------------------------------------------
# Forks the run from this small fresh process and reports that run's rusage. A child spawned straight
# from the benchmark would report the benchmark's own peak RSS when larger than its own: Linux carries
# the pre-exec high-water mark across exec into the child's ru_maxrss.
def die_with_parent() -> None:
    """Be killed when the parent process dies (PR_SET_PDEATHSIG, Linux); elsewhere a no-op."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: Ctrl-C and SIGTERM still end the run (run_child)
        pass


# Both the launcher and the run die with their parent: a benchmark killed even by SIGKILL leaves
# no orphaned run behind to race a rerun in the same folder.
PEAK_RSS_LAUNCHER = (
    inspect.getsource(die_with_parent)
    + """
import os, sys
pid = os.fork()
if pid == 0:
    die_with_parent()
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(f"{status} {usage.ru_maxrss}")
"""
)


def run_child(cmd: Sequence[str], log_path: Path) -> ChildRun:
    """Run `cmd` (cmd[0] an absolute path) with its output in `log_path`; its wall time and peak RSS.

    The peak is the largest process of the run (its own or a reaped child's, e.g. a DataLoader worker).
    """
    report = log_path.with_name(log_path.name + ".rusage")
    report.unlink(missing_ok=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        # a session of its own: Ctrl-C reaches the benchmark only, which then ends the whole run below
        launcher = subprocess.Popen(
            [sys.executable, "-c", PEAK_RSS_LAUNCHER, str(report), *cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        try:
            launcher.wait()
        except BaseException:  # Ctrl-C or SIGTERM: stop the run too, and record nothing for it
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
            raise
    seconds = time.perf_counter() - start
    if not report.is_file():  # the launcher itself was killed
        return ChildRun(launcher.returncode, seconds, None)
    status, maxrss = (int(x) for x in report.read_text().split())
    report.unlink()
    return ChildRun(os.waitstatus_to_exitcode(status), seconds, maxrss / MAXRSS_PER_MB)


def failure_reason(returncode: int, log_text: str) -> str:
    """One line for the status column: the signal that killed the run, or the last line it printed."""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return f"killed by {name}" + (" (out of memory?)" if -returncode == signal.SIGKILL else "")
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    last = lines[-1].removeprefix("error: ") if lines else "no output"
    return f"{last[:300]} (exit {returncode})"


def claim_run_folder(run_root: Path) -> Path:
    """A new folder run_<N> in `run_root` (N one more than the largest there), taken with one atomic mkdir.

    No other process can take the same folder: two benchmarks whose --out share a folder (each
    holding only its own CSV's lock) run the same config and category in run_<N> and run_<N+1>.
    """
    return run_root / f"run_{claim_numbered_folder(run_root, 'run_')}"


def run_row(run: PlannedRun) -> Row:
    """Run one planned train+test in a folder of its own; its exit status and metrics.json as a results row.

    The folder (claim_run_folder) is the run's default_root_dir and holds its train.log; the row
    reads metrics.json from there only, so a run beside it in run_root (another benchmark's, a
    `train` by hand) never lends it its numbers.
    """
    folder = claim_run_folder(run.run_root)
    log_path = folder / "train.log"
    child = run_child([sys.executable, *run.args_in(folder)], log_path)
    written = sorted((path.stat().st_mtime_ns, path) for path in folder.rglob("metrics.json"))
    row: Row = {
        **dict.fromkeys(COLUMNS),
        "detector": Path(run.config).stem,  # until metrics.json names it
        "config": run.config,
        "category": run.category,
        "seconds": child.seconds,
        "peak_rss_mb": child.peak_rss_mb,
        "run_dir": str(folder),
        "command": run.command_in(folder),
    }
    if child.returncode != 0:
        log = log_path.read_text(errors="replace") if log_path.is_file() else ""  # gone: removed mid-run
        return row | {"status": "failed: " + failure_reason(child.returncode, log)}
    if not written:
        return row | {"status": f"failed: the run wrote no metrics.json (see {log_path})"}
    metrics_path = written[-1][1]
    metrics = json.loads(metrics_path.read_text())
    return row | {
        **{c: None if metrics.get(c) is None else float(metrics[c]) for c in METRIC_COLUMNS},
        "detector": metrics.get("detector") or row["detector"],
        "status": OK,
        "n_test": metrics.get("n_test"),
        "protocol": metrics.get("protocol_detail") or metrics.get("protocol"),
        "run_dir": str(metrics_path.parent),
    }


def check_resumable(rows: dict[tuple[str, str], Row], plan: Sequence[PlannedRun], csv_path: Path) -> None:
    """A finished row is only reused for the very same command; otherwise its numbers would mix settings."""
    for run in plan:
        row = rows.get(run.key)
        if is_finished(row) and not run.made(row["command"]):
            raise ConfigError(
                f"'{csv_path}' holds a finished {run.config} / {run.category} row made by another command:\n"
                f"  {row['command']}\nthis benchmark would run:\n  {run.command}\n"
                f"Keep the same options to resume, or pass another --out to start a new results file."
            )


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


@contextmanager
def results_lock(csv_path: Path) -> Iterator[None]:
    """Hold `<out>.lock` for the benchmark's lifetime: a second benchmark on the same --out is refused.

    flock is released by the kernel when its holder dies, however it dies, so a rerun after a kill
    is never blocked by a stale lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): no lock; do not run two benchmarks on one --out there
        yield
        return
    lock_path = csv_path.with_name(csv_path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise ConfigError(
                f"Another benchmark (pid {holder}) is running on '{csv_path}': wait for it to finish, or "
                f"pass another --out."
            ) from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)


def run_benchmark(plan: Sequence[PlannedRun], csv_path: Path) -> list[Row]:
    """Run every planned row not yet ok in `csv_path`, rewriting the results after each; the plan's rows.

    Holds the results file's lock throughout (results_lock).
    """
    with results_lock(csv_path):
        return run_unlocked(plan, csv_path)


def run_unlocked(plan: Sequence[PlannedRun], csv_path: Path) -> list[Row]:
    rows = {row_key(row): row for row in read_rows(csv_path)}
    check_resumable(rows, plan, csv_path)
    planned_keys = [run.key for run in plan]
    planned = set(planned_keys)

    def table_order() -> list[Row]:  # the plan's rows first; rows of other configs/categories are kept
        return [rows[k] for k in planned_keys if k in rows] + [r for k, r in rows.items() if k not in planned]

    n_to_run = sum(not is_finished(rows.get(run.key)) for run in plan)
    durations: list[float] = []
    # Rich's bar (on a terminal only) keeps these lines above it
    with steps("Benchmark runs", n_to_run) as bar:
        for i, run in enumerate(plan, 1):
            prefix = f"[{i}/{len(plan)}] {Path(run.config).stem} {run.category} ..."
            if is_finished(rows.get(run.key)):
                print(f"{prefix} skipped (ok in {csv_path})", flush=True)
                continue
            print(prefix, end=" ", flush=True)
            try:
                rows[run.key] = row = run_row(run)
            except (KeyboardInterrupt, SystemExit) as stop:  # Ctrl-C or SIGTERM: this row is not recorded
                print("interrupted; rerun the same command to resume from here", flush=True)
                raise SystemExit(130 if isinstance(stop, KeyboardInterrupt) else stop.code) from None
            write_results(csv_path, table_order())
            durations.append(float(row["seconds"]))
            left = n_to_run - len(durations)
            eta = f" (ETA {format_duration(left * sum(durations) / len(durations))})" if left else ""
            print(f"{row['status']} {format_duration(float(row['seconds']))}{eta}", flush=True)
            bar.advance()
    write_results(csv_path, table_order())  # also when every row was skipped
    return [rows[k] for k in planned_keys]


def main(argv: Sequence[str]) -> None:
    args, overrides = parse_args(argv)
    configs = check_configs(args.configs)
    categories = resolve_categories(args.root, args.categories)
    csv_path = Path(args.out)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    plan = plan_runs(configs, args.root, categories, csv_path.parent, overrides)
    print(
        f"Benchmark: {len(configs)} config(s) x {len(categories)} categor{'y' if len(categories) == 1 else 'ies'}"
    )
    # `kill <pid>` then ends the running row's processes too (run_child), as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    rows = run_benchmark(plan, csv_path)
    failed = [row for row in rows if row["status"] != OK]
    pages = f"{markdown_path(csv_path)}, {html_path(csv_path).resolve().as_uri()}"
    print(f"{len(rows) - len(failed)}/{len(rows)} runs ok. Results: {csv_path}, {pages}")
    if failed:
        print(f"{len(failed)} failed: see the status column and train.log in each run folder.")
        sys.exit(1)
