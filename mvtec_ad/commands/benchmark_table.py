"""The benchmark's results: one row per (config, category) run, a mean row per config, CSV, markdown, HTML.

results.csv is also the resume state: a (config, category) row with status `ok` is finished and is
never run again; a failed or missing row runs on the next invocation. Both files are rewritten
whole (temp file + rename) after every run, so a kill loses at most the running row. The rows'
columns and the mean rows are evaluation/results_table.py's, shared with report/results_page.py.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from mvtec_ad.errors import ConfigError
from mvtec_ad.evaluation.results_table import (
    COLUMNS,
    MEAN,
    METRIC_COLUMNS,
    OK,
    Row,
    group_by_config,
    mean_row,
    ok_values,
)
from mvtec_ad.report.files import write_text
from mvtec_ad.report.results_page import write_results_page

FLOAT_COLUMNS = frozenset((*METRIC_COLUMNS, "seconds", "peak_rss_mb"))
INT_COLUMNS = frozenset({"n_test"})
MARKDOWN_METRICS = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "pixel_aupro": "pixel AUPRO",
    "image_f1_max": "image F1max",
    "balanced_accuracy": "bal. acc.",
}


def row_key(row: Row) -> tuple[str, str]:
    """What identifies a run across invocations: the config path as given, and the category."""
    return str(row["config"]), str(row["category"])


def is_finished(row: Row | None) -> bool:
    return row is not None and row["status"] == OK


def is_mean_row(row: Row) -> bool:
    return str(row["status"]).startswith(MEAN)


# ---- CSV ---------------------------------------------------------------------------------------
def parse_cell(column: str, text: str) -> str | float | int | None:
    """A CSV cell back to its value: empty is None (as written), numbers by column."""
    if text == "":
        return None
    if column in INT_COLUMNS:
        return int(text)
    return float(text) if column in FLOAT_COLUMNS else text


def read_rows(path: Path) -> list[Row]:
    """The per-category rows of an earlier results.csv (mean rows are recomputed, so dropped); [] if none."""
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        missing = {"config", "category", "status"} - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(
                f"'{path}' is not a benchmark results file (no {', '.join(sorted(missing))} column); "
                f"pass another --out, or move that file away."
            )
        rows = [{c: parse_cell(c, record.get(c) or "") for c in COLUMNS} for record in reader]
    return [row for row in rows if not is_mean_row(row)]


def csv_text(rows: Sequence[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row[c] for c in COLUMNS})
    return buffer.getvalue()


def rows_with_means(rows: Iterable[Row]) -> list[Row]:
    """Rows grouped by config, each group followed by its mean row (the layout of results.csv)."""
    return [row for group in group_by_config(rows).values() for row in (*group, mean_row(group))]


# ---- markdown ----------------------------------------------------------------------------------
def fmt(value: str | float | int | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def mean_cell(rows: Sequence[Row], column: str, n_ok: int, digits: int = 3) -> str:
    """The mean of `column`, with the number of categories behind it when fewer than the ok ones."""
    values = ok_values(rows, column)
    if not values:
        return "–"
    cell = fmt(sum(values) / len(values), digits)
    return cell if len(values) == n_ok else f"{cell} (n={len(values)})"


def table(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def markdown_text(rows: Sequence[Row]) -> str:
    """results.md: a summary table of the detectors' means, then one table per config with its commands."""
    groups = group_by_config(rows)
    labels = list(MARKDOWN_METRICS.values())
    summary = []
    for config, group in groups.items():
        n_ok = sum(row["status"] == OK for row in group)
        summary.append(
            [fmt(mean_row(group)["detector"]), f"`{config}`", f"{n_ok}/{len(group)}"]
            + [mean_cell(group, c, n_ok) for c in MARKDOWN_METRICS]
            + [mean_cell(group, "seconds", n_ok, digits=0)]
        )
    lines = ["# Benchmark results", ""]
    lines += table(["detector", "config", "categories ok", *labels, "mean seconds"], summary)
    lines += [
        "",
        "Means are unweighted over the categories whose run is ok; failed runs are left out, and so is a "
        "metric a detector does not produce (pixel metrics of image-only detectors): `(n=k)` says a mean "
        "covers fewer categories than the ok ones. Peak RSS is the largest process of a run.",
    ]
    category_sets = {frozenset(row["category"] for row in g if row["status"] == OK) for g in groups.values()}
    if len(category_sets) > 1:
        lines += [
            "",
            "**The detectors do not have ok runs on the same categories (see categories ok): "
            "their means cover different categories and are not directly comparable.**",
        ]
    for config, group in groups.items():
        mean = mean_row(group)
        n_ok = sum(row["status"] == OK for row in group)
        body = [
            [fmt(row["category"]), fmt(row["status"])]
            + [fmt(row[c]) for c in MARKDOWN_METRICS]
            + [fmt(row["seconds"], 0), fmt(row["peak_rss_mb"], 0)]
            for row in group
        ]
        body.append(
            [f"**{MEAN}**", fmt(mean["status"])]
            + [mean_cell(group, c, n_ok) for c in MARKDOWN_METRICS]
            + [fmt(mean["seconds"], 0), fmt(mean["peak_rss_mb"], 0)]
        )
        lines += [
            "",
            f"## {fmt(mean['detector'])} (`{config}`)",
            "",
            f"Protocol: {fmt(mean['protocol'])}",
            "",
        ]
        lines += table(["category", "status", *labels, "seconds", "peak RSS MB"], body)
        lines += ["", "Commands:", "", "```"] + [str(row["command"]) for row in group] + ["```"]
    return "\n".join(lines) + "\n"


def markdown_path(csv_path: Path) -> Path:
    return csv_path.with_suffix(".md")


def write_results(csv_path: Path, rows: Sequence[Row]) -> None:
    """Write results.csv (rows + mean rows), results.md and results.html (report.results_page) beside it."""
    write_text(csv_path, csv_text(rows_with_means(rows)))
    write_text(markdown_path(csv_path), markdown_text(rows))
    write_results_page(csv_path, rows)
