"""results.html: the benchmark's detectors x categories as a page a person opens from a file:// URL.

One table per metric (a selector switches between them): a row per config, a column per
category, then the mean over the ok categories, the config's seconds (sum over its runs) and
its peak memory (largest run). The best value of each column is marked (highest metric, fewest
seconds, least memory); a click on a column's header sorts the rows by it. Each cell links to
its run's report/index.html (a failed run: to its train.log). Self-contained like report.page.
The rows' columns and each config's mean come from evaluation/results_table.py.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from mvtec_ad.evaluation.results_table import OK, group_by_config, mean_row, ok_values
from mvtec_ad.report.files import write_text
from mvtec_ad.report.page import esc, link

PAGE_METRICS = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "pixel_aupro": "pixel AUPRO",
    "image_f1_max": "image F1 max",
    "balanced_accuracy": "balanced accuracy",
}

CSS = """
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330;
  background: #f5f6f8; }
header { padding: 16px 24px; background: #1d2330; color: #fff; }
header h1 { margin: 0; font-size: 20px; font-weight: 600; }
header p { margin: 4px 0 0; color: #c6ccd8; }
main { padding: 16px 24px 40px; overflow-x: auto; }
.controls { margin-bottom: 12px; }
.controls label { color: #5b6475; }
select { font: inherit; }
table { border-collapse: collapse; background: #fff; border: 1px solid #d9dde5; }
th, td { padding: 5px 10px; border-bottom: 1px solid #d9dde5; text-align: right; white-space: nowrap;
  font-variant-numeric: tabular-nums; }
th:first-child, td:first-child { text-align: left; }
thead th { cursor: pointer; user-select: none; background: #eef0f4; position: sticky; top: 0; }
thead th[aria-sort="descending"]::after { content: " ▼"; }
thead th[aria-sort="ascending"]::after { content: " ▲"; }
td.best { font-weight: 700; background: #e6f4ea; }
td.best::after { content: " ★"; color: #1a7f37; }
td.failed a { color: #d1242f; }
td a { color: inherit; text-decoration: none; border-bottom: 1px dotted #8b93a3; }
td.mean, th.mean { border-left: 2px solid #b8bfcc; }
.config { color: #5b6475; font-size: 12px; }
.notes { color: #5b6475; max-width: 900px; }
"""

SCRIPT = """
(function () {
  "use strict";
  const chooser = document.getElementById("metric");
  function showMetric() {
    for (const t of document.querySelectorAll("table.results")) t.hidden = t.dataset.metric !== chooser.value;
  }
  function sortBy(table, column, header) {
    const current = header.getAttribute("aria-sort");
    const byName = header.dataset.better === "name";
    // first click: best first (highest metric, fewest seconds) or A-Z; next clicks reverse
    const descending = current ? current === "ascending" : !(byName || header.dataset.better === "lower");
    for (const h of table.tHead.rows[0].cells) h.removeAttribute("aria-sort");
    header.setAttribute("aria-sort", descending ? "descending" : "ascending");
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const p = a.cells[column].dataset.value, q = b.cells[column].dataset.value;
      if (byName) return descending ? q.localeCompare(p) : p.localeCompare(q);
      const x = Number(p), y = Number(q);
      if (Number.isNaN(x) || Number.isNaN(y)) return Number.isNaN(x) - Number.isNaN(y);  // missing last
      return descending ? y - x : x - y;
    });
    for (const row of rows) body.appendChild(row);
  }
  for (const table of document.querySelectorAll("table.results")) {
    Array.from(table.tHead.rows[0].cells).forEach((header, column) =>
      header.addEventListener("click", () => sortBy(table, column, header)));
  }
  chooser.addEventListener("change", showMetric);
  showMetric();
})();
"""


def report_link(row: dict, page_dir: Path) -> str | None:
    """The URL of the run's report page (or, for a failed run, its train.log) relative to the page's folder."""
    run_dir = Path(str(row.get("run_dir") or ""))
    if not row.get("run_dir"):
        return None
    target = run_dir / "report" / "index.html" if row["status"] == OK else run_dir / "train.log"
    if row["status"] != OK and not target.exists():
        target = next(run_dir.rglob("train.log"), target)
    return link(os.path.relpath(target.resolve(), page_dir.resolve()))


def finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def td(inner: str, value: float | str | None, classes: Sequence[str] = ()) -> str:
    """A table cell; `value` is what sorting compares (None: missing, sorted last)."""
    cls = f' class="{" ".join(classes)}"' if classes else ""
    data = "NaN" if value is None else esc(value)
    return f'<td{cls} data-value="{data}">{inner}</td>'


def metric_table(metric: str, groups: dict[str, list[dict]], categories: list[str], page_dir: Path) -> str:
    """One metric's table: configs x categories, mean, seconds, peak memory; the best of each column marked."""
    columns = [*categories, "mean", "seconds", "peak RSS MB"]  # seconds: summed over the ok runs
    lower_is_better = {"seconds", "peak RSS MB"}
    # per config and column: the value compared, the cell's text, its classes, whether it may be best
    table: dict[str, dict[str, tuple[float | None, str, list[str], bool]]] = {}
    for config, rows in groups.items():
        by_category = {str(r["category"]): r for r in rows}
        mean = mean_row(rows)
        table[config] = {}
        for category in categories:
            row = by_category.get(category)
            if row is None:
                table[config][category] = (None, "–", [], True)
                continue
            ok = row["status"] == OK
            value = finite(row.get(metric)) if ok else None
            text = f"{value:.3f}" if value is not None else ("–" if ok else "failed")
            link = report_link(row, page_dir)
            seconds = finite(row.get("seconds"))
            title = str(row["status"]) + (f", {seconds:.0f} s" if seconds is not None else "")
            inner = f'<a href="{esc(link)}" title="{esc(title)}">{text}</a>' if link else esc(text)
            table[config][category] = (value, inner, [] if ok else ["failed"], True)
        n_values = len(ok_values(rows, metric))
        seconds = ok_values(rows, "seconds")
        summary = {
            "mean": finite(mean.get(metric)),
            "seconds": sum(seconds) if seconds else None,
            "peak RSS MB": finite(mean.get("peak_rss_mb")),
        }
        for column, value in summary.items():
            text = "–" if value is None else f"{value:.{3 if column == 'mean' else 0}f}"
            # a mean over fewer categories than the table's is shown, but never the column's best
            complete = column != "mean" or n_values == len(categories)
            if column == "mean" and value is not None and not complete:
                text += f" (n={n_values})"
            table[config][column] = (value, text, ["mean"] if column == "mean" else [], complete)
    for column in columns:  # the best of each column, ties all marked; not when only one value is there
        present = [c[column][0] for c in table.values() if c[column][0] is not None and c[column][3]]
        if len(present) < 2:
            continue
        best = min(present) if column in lower_is_better else max(present)
        for cells in table.values():
            if cells[column][0] == best and cells[column][3]:
                cells[column][2].append("best")
    header = "".join(
        f'<th data-better="{"lower" if c in lower_is_better else "higher"}"'
        + (' class="mean"' if c == "mean" else "")
        + f">{esc(c)}</th>"
        for c in columns
    )
    body = []
    for config, rows in groups.items():
        detector = str(mean_row(rows)["detector"])
        first = td(f'{esc(detector)}<div class="config">{esc(config)}</div>', detector)
        body.append(
            "<tr>"
            + first
            + "".join(td(t, v, c) for v, t, c, _ in (table[config][k] for k in columns))
            + "</tr>"
        )
    return (
        f'<table class="results" data-metric="{esc(metric)}"><thead><tr><th data-better="name">detector</th>'
        f"{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def results_page_html(rows: Sequence[dict], page_dir: Path) -> str:
    """The page for the benchmark's per-category rows (results.csv without its mean rows)."""
    groups = group_by_config(rows)
    categories = list(dict.fromkeys(str(r["category"]) for r in rows))
    n_ok = sum(r["status"] == OK for r in rows)
    options = "".join(f'<option value="{m}">{esc(label)}</option>' for m, label in PAGE_METRICS.items())
    tables = "".join(metric_table(m, groups, categories, page_dir) for m in PAGE_METRICS)
    written = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    subtitle = (
        f"{len(groups)} config(s) x {len(categories)} categor{'y' if len(categories) == 1 else 'ies'} · "
        f"{n_ok} of {len(rows)} runs ok · written {written}"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Benchmark results</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>Benchmark results</h1><p>{esc(subtitle)}</p></header>
<main>
<div class="controls"><label for="metric">Metric</label> <select id="metric">{options}</select></div>
{tables}
<p class="notes">★ the best of a column (highest metric; fewest seconds; least memory). Means are unweighted over
the categories whose run is ok; (n=k) says a mean covers only k of the categories (it is never marked best).
Seconds: the config's ok runs summed; peak RSS:
its largest run. Click a value for that run's report, a header to sort.</p>
</main>
<script>{SCRIPT}</script>
</body>
</html>
"""


def html_path(csv_path: Path) -> Path:
    return csv_path.with_suffix(".html")


def write_results_page(csv_path: Path, rows: Sequence[dict]) -> Path:
    """results.html beside results.csv (atomically)."""
    path = html_path(csv_path)
    return write_text(path, results_page_html(rows, path.parent))
