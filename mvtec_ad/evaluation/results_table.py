"""The benchmark's results table as data: a row per (config, category) run, its columns, and the mean
row of each config. Pure: commands/benchmark_table.py writes it as CSV and markdown,
report/results_page.py as results.html; both take the rows and means from here (neither imports the other).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from mvtec_ad.evaluation.results import METRIC_KEYS

Row = dict[str, str | float | int | None]

OK = "ok"
MEAN = "mean"
# the evaluation numbers of metrics.json in its order (identity keys have their own columns), plus
# the F1 at the operating threshold, which metrics.json holds beside precision and recall
METRIC_IDENTITY = ("detector", "category", "protocol", "n_test")
METRIC_COLUMNS = (*(k for k in METRIC_KEYS if k not in METRIC_IDENTITY), "f1")
COLUMNS = (
    "detector",
    "config",
    "category",
    "status",
    *METRIC_COLUMNS,
    "n_test",
    "protocol",
    "seconds",
    "peak_rss_mb",
    "run_dir",
    "command",
)


def group_by_config(rows: Iterable[Row]) -> dict[str, list[Row]]:
    """Per-category rows by config, configs in order of first appearance."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(str(row["config"]), []).append(row)
    return groups


def ok_values(rows: Sequence[Row], column: str) -> list[float]:
    """The finite values of `column` over the ok rows: null (image-only detectors) and NaN are left out."""
    values = (row[column] for row in rows if row["status"] == OK)
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_row(rows: Sequence[Row]) -> Row:
    """The unweighted mean over the ok categories of one config; its status says over how many."""
    n_ok = sum(row["status"] == OK for row in rows)
    mean = {c: (sum(v) / len(v) if (v := ok_values(rows, c)) else None) for c in (*METRIC_COLUMNS, "seconds")}
    peaks = ok_values(rows, "peak_rss_mb")
    fewer = [c for c in METRIC_COLUMNS if 0 < len(ok_values(rows, c)) < n_ok]
    status = f"{MEAN} of {n_ok} ok of {len(rows)} categories"
    if fewer:
        status += "; " + ", ".join(f"{c} over {len(ok_values(rows, c))}" for c in fewer)
    ok_rows = [row for row in rows if row["status"] == OK] or list(rows)
    protocols = sorted({str(row["protocol"]) for row in ok_rows if row["protocol"]})
    return {
        **dict.fromkeys(COLUMNS),
        **mean,
        "detector": ok_rows[0]["detector"],
        "config": rows[0]["config"],
        "category": MEAN,
        "status": status,
        "protocol": (" / ".join(protocols) or None)
        if len(protocols) < 2
        else "mixed: " + " / ".join(protocols),
        "peak_rss_mb": max(peaks) if peaks else None,  # the largest run, not a mean
    }
