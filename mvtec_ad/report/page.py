"""report/index.html: one page per test or predict run that a person opens from a file:// URL.

Self-contained: the CSS and the script are inline, nothing comes from a network, no server is
needed; pictures are files beside the page (gallery.py) and the charts are the run's plots/*.png.
It shows the run (detector, data, geometry, threshold, checkpoint, command), the metrics, the
charts, and a card for every image: sort by score, filter by defect type and by outcome
(TP / FP / TN / FN at the threshold; predict: flagged / passed), click (or Enter) for the
image | heatmap | predicted mask | ground truth at full size, arrow keys for the next image.

Cards are in the HTML itself (readable without the script); thumbnails load lazily and off-screen
cards are not laid out (content-visibility), so a page of thousands of images stays responsive.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from mvtec_ad.report.files import write_text
from mvtec_ad.report.gallery import Card

OUTCOMES = {
    "TP": "true positive: defective, flagged",
    "FN": "false negative: defective, passed",
    "FP": "false positive: good, flagged",
    "TN": "true negative: good, passed",
}
PANELS = {"image": "image", "heatmap": "heatmap", "predicted": "predicted mask", "truth": "ground truth"}
# the metrics table: metrics.json keys in this order, where present and not null
METRIC_ROWS = (
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("pixel_aupro", "pixel AUPRO (FPR ≤ {aupro_fpr_limit:g})"),
    ("image_f1_max", "image F1 max (oracle, fitted on test)"),
    ("image_f1_max_threshold", "threshold at F1 max"),
    ("threshold", "operating threshold"),
    ("threshold_method", "thresholds fitted by"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("specificity", "specificity"),
    ("false_alarm_rate", "false-alarm rate (normals flagged)"),
    ("f1", "F1"),
    ("balanced_accuracy", "balanced accuracy"),
    ("error_rate", "error rate"),
    ("pixel_threshold", "pixel threshold"),
    ("pixel_precision", "pixel precision"),
    ("pixel_recall", "pixel recall"),
    ("seg_f1", "pixel F1 at the pixel threshold (SegF1)"),
    ("pixel_f1_max", "pixel F1 max (oracle, fitted on test)"),
    ("n_test", "test images"),
    ("n_defective", "defective test images"),
    ("pixel_resolution", "pixel metrics at"),
)

CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dde5; --bg: #f5f6f8; --card: #fff;
  --tp: #1a7f37; --tn: #4b6bfb; --fp: #d1242f; --fn: #bf8700; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
  background: var(--bg); }
header { padding: 16px 24px; background: #1d2330; color: #fff; }
header h1 { margin: 0; font-size: 20px; font-weight: 600; }
header p { margin: 4px 0 0; color: #c6ccd8; }
main { padding: 8px 24px 40px; }
section { margin-top: 20px; }
h2 { font-size: 16px; margin: 0 0 8px; }
.columns { display: flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; }
table.kv { border-collapse: collapse; background: var(--card); border: 1px solid var(--line); }
table.kv th, table.kv td { text-align: left; padding: 4px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
table.kv th { color: var(--muted); font-weight: 500; white-space: nowrap; }
table.kv td { font-variant-numeric: tabular-nums; max-width: 640px; overflow-wrap: anywhere; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; }
.notes { color: #8a4b00; max-width: 900px; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
.charts figure { margin: 0; background: var(--card); border: 1px solid var(--line); }
.charts img { display: block; width: 292px; height: auto; }  /* four in a row at 1280 px; a click opens one */
.charts figcaption { padding: 2px 8px; color: var(--muted); }
.controls { position: sticky; top: 0; z-index: 2; display: flex; flex-wrap: wrap; gap: 14px;
  align-items: center; padding: 10px 0; background: var(--bg); border-bottom: 1px solid var(--line); }
.controls label { color: var(--muted); }
.controls select { font: inherit; padding: 2px 4px; }
#shown { margin-left: auto; color: var(--muted); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(176px, 1fr)); gap: 10px;
  margin-top: 12px; }
.card { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  overflow: hidden; cursor: pointer; content-visibility: auto; contain-intrinsic-size: 176px 236px; }
.card:hover, .card:focus { outline: 2px solid #4b6bfb; outline-offset: -1px; }
.card[hidden] { display: none; }
.card img { display: block; width: 100%; aspect-ratio: 1; object-fit: contain; background: #222;
  image-rendering: pixelated; }
.card figcaption { padding: 6px 8px; }
.score { font-weight: 600; font-variant-numeric: tabular-nums; }
.file { color: var(--muted); font-size: 12px; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; color: #fff; font-size: 12px;
  background: var(--muted); }
.badge.TP { background: var(--tp); } .badge.TN { background: var(--tn); }
.badge.FP { background: var(--fp); } .badge.FN { background: var(--fn); }
.badge.flagged { background: var(--fp); } .badge.passed { background: var(--tn); }
.defect { float: right; color: var(--muted); font-size: 12px; }
dialog { max-width: 96vw; max-height: 94vh; padding: 0; border: 0; border-radius: 8px; }
dialog::backdrop { background: rgba(10, 12, 20, .75); }
.viewer-head { display: flex; gap: 12px; align-items: center; padding: 10px 14px;
  border-bottom: 1px solid var(--line); }
.viewer-head .title { font-weight: 600; overflow-wrap: anywhere; }
.viewer-head button { font: inherit; }
.viewer-head .spacer { flex: 1; }
.panels { display: flex; gap: 10px; padding: 12px; overflow: auto; max-height: 82vh; }
.panels figure { margin: 0; }
.panels img { display: block; width: min(calc((96vw - 64px) / 4), 480px); height: auto; image-rendering: pixelated;
  background: #222; }
.panels figcaption { color: var(--muted); padding-top: 2px; }
.panels a { color: inherit; }
"""

SCRIPT = """
(function () {
  "use strict";
  const grid = document.getElementById("grid");
  const cards = Array.from(grid.querySelectorAll(".card"));
  const sortBox = document.getElementById("sort");
  const defectBox = document.getElementById("defect");
  const outcomeBox = document.getElementById("outcome");
  const shown = document.getElementById("shown");
  const viewer = document.getElementById("viewer");
  let current = null;

  function visible() { return Array.from(grid.children).filter((c) => !c.hidden); }  // as shown

  function order() {
    const key = sortBox.value;
    const by = {
      "score-desc": (a, b) => b.dataset.score - a.dataset.score || a.dataset.index - b.dataset.index,
      "score-asc": (a, b) => a.dataset.score - b.dataset.score || a.dataset.index - b.dataset.index,
      "name": (a, b) => a.dataset.path.localeCompare(b.dataset.path),
      "index": (a, b) => a.dataset.index - b.dataset.index,
    }[key];
    const fragment = document.createDocumentFragment();
    cards.slice().sort(by).forEach((c) => fragment.appendChild(c));
    grid.appendChild(fragment);
  }

  function filter() {
    const defect = defectBox ? defectBox.value : "";
    const outcome = outcomeBox ? outcomeBox.value : "";
    let n = 0;
    for (const c of cards) {
      const keep = (!defect || c.dataset.defect === defect) && (!outcome || c.dataset.outcome === outcome);
      c.hidden = !keep;
      n += keep ? 1 : 0;
    }
    shown.textContent = n + " of " + cards.length + " images";
  }

  function show(card) {
    current = card;
    const files = JSON.parse(card.dataset.files);
    const panels = viewer.querySelector(".panels");
    panels.replaceChildren();
    for (const [role, label] of PANELS) {
      if (!files[role]) continue;
      const figure = document.createElement("figure");
      const link = document.createElement("a");
      link.href = files[role];
      link.target = "_blank";
      const img = document.createElement("img");
      img.src = files[role];
      img.alt = label;
      link.appendChild(img);
      const caption = document.createElement("figcaption");
      caption.textContent = label;
      figure.append(link, caption);
      panels.appendChild(figure);
    }
    viewer.querySelector(".title").textContent = card.dataset.path;
    viewer.querySelector(".detail").textContent = card.dataset.detail;
    if (!viewer.open) viewer.showModal();
  }

  function step(delta) {
    const list = visible();
    const at = list.indexOf(current);
    if (at < 0 || !list.length) return;
    show(list[(at + delta + list.length) % list.length]);
  }

  const PANELS = JSON.parse(document.getElementById("panels").textContent);
  grid.addEventListener("click", (e) => { const c = e.target.closest(".card"); if (c) show(c); });
  grid.addEventListener("keydown", (e) => {
    const c = e.target.closest(".card");
    if (c && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); show(c); }
  });
  viewer.addEventListener("keydown", (e) => {
    if (e.key === "ArrowRight") step(1);
    if (e.key === "ArrowLeft") step(-1);
  });
  viewer.querySelector(".prev").addEventListener("click", () => step(-1));
  viewer.querySelector(".next").addEventListener("click", () => step(1));
  viewer.querySelector(".close").addEventListener("click", () => viewer.close());
  viewer.addEventListener("click", (e) => { if (e.target === viewer) viewer.close(); });
  sortBox.addEventListener("change", order);
  if (defectBox) defectBox.addEventListener("change", filter);
  if (outcomeBox) outcomeBox.addEventListener("change", filter);
  order();
  filter();
})();
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def link(path: str | Path) -> str:
    """A relative file path as the URL a page links it by: each segment percent-encoded.

    '#', '?', '%' (and ':' that would start a scheme) are then part of a name, not a fragment, a
    query, an escape or a javascript: link. Every href and src of the pages goes through it (then
    through esc, as every attribute). Names that are not UTF-8 keep their bytes (surrogateescape).
    """
    parts = Path(path).as_posix().split("/")
    return "/".join(quote(part, safe="", errors="surrogateescape") for part in parts)


def number(value: object) -> str:
    """A metric as the page shows it: 4 significant decimals, integers as they are, null as –."""
    if value is None:
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def key_value_table(rows: Sequence[tuple[str, str]], code: Sequence[str] = ()) -> str:
    """A two-column table; values of the keys in `code` in monospace."""
    body = "".join(
        f"<tr><th>{esc(k)}</th><td>{f'<code>{esc(v)}</code>' if k in code else esc(v)}</td></tr>"
        for k, v in rows
    )
    return f'<table class="kv">{body}</table>'


def card_html(card: Card, threshold: float | None) -> str:
    """One image's card: thumbnail, score, verdict or outcome badge, defect type, file name."""
    outcome = card.outcome(threshold)
    verdict = card.verdict(threshold)
    if outcome is not None:
        badge, badge_title = outcome, OUTCOMES[outcome]
    elif verdict is not None:
        badge = "flagged" if verdict else "passed"
        badge_title = f"score {'≥' if verdict else '<'} threshold {threshold:.4g}"
    else:
        badge, badge_title = "", ""
    detail = [f"score {card.score:.4g}"]
    if threshold is not None:
        detail.append(
            f"{'flagged anomalous' if verdict else 'passed as normal'} at threshold {threshold:.4g}"
        )
    if card.truth is not None:
        detail.append(f"truth: {card.defect} ({'defective' if card.truth else 'good'})")
    if outcome is not None:
        detail.append(OUTCOMES[outcome])
    path = Path(card.path)
    attrs = {
        "class": "card",
        "tabindex": "0",
        "data-index": card.index,
        "data-score": repr(card.score),
        "data-path": card.path,
        "data-defect": card.defect or "",
        "data-outcome": outcome or (badge if verdict is not None else ""),
        "data-files": json.dumps({role: link(file) for role, file in card.files.items()}),
        "data-detail": " · ".join(detail),
    }
    attributes = " ".join(f'{k}="{esc(v)}"' for k, v in attrs.items())
    badge_html = (
        f'<span class="badge {esc(badge)}" title="{esc(badge_title)}">{esc(badge)}</span>' if badge else ""
    )
    defect_html = f'<span class="defect">{esc(card.defect)}</span>' if card.defect else ""
    return (
        f"<figure {attributes}>"
        f'<img loading="lazy" decoding="async" src="{esc(link(card.files["thumb"]))}" alt="{esc(path.name)}">'
        f'<figcaption>{defect_html}<span class="score">{card.score:.4g}</span> {badge_html}'
        f'<div class="file">{esc(path.parent.name)}/{esc(path.name)}</div></figcaption></figure>'
    )


def select_html(element_id: str, label: str, options: Sequence[tuple[str, str]]) -> str:
    items = "".join(f'<option value="{esc(v)}">{esc(text)}</option>' for v, text in options)
    return f'<label for="{element_id}">{esc(label)}</label> <select id="{element_id}">{items}</select>'


def controls_html(cards: Sequence[Card], threshold: float | None, truth: bool) -> str:
    sorts = [
        ("score-desc", "score, highest first"),
        ("score-asc", "score, lowest first"),
        ("index", "dataset order"),
        ("name", "file name"),
    ]
    parts = [select_html("sort", "Sort by", sorts)]
    if truth:
        counts = Counter(c.defect for c in cards)
        defects = sorted(counts, key=lambda d: (d != "good", d))
        parts.append(
            select_html(
                "defect",
                "Defect type",
                [("", f"all ({len(cards)})")] + [(d, f"{d} ({counts[d]})") for d in defects],
            )
        )
    if threshold is not None:
        if truth:
            counts = Counter(c.outcome(threshold) for c in cards)
            outcomes = [(o, f"{o}: {OUTCOMES[o].split(':')[0]} ({counts[o]})") for o in OUTCOMES]
            parts.append(select_html("outcome", "Outcome", [("", "all"), *outcomes]))
        else:
            counts = Counter(c.verdict(threshold) for c in cards)
            verdicts = [("flagged", f"flagged ({counts[1]})"), ("passed", f"passed ({counts[0]})")]
            parts.append(select_html("outcome", "Verdict", [("", "all"), *verdicts]))
    return '<div class="controls">' + " ".join(parts) + '<span id="shown"></span></div>'


def run_page_html(
    kind: str,
    run: Sequence[tuple[str, str]],
    metrics: dict | None,
    notes: Sequence[str],
    charts: Sequence[tuple[str, str]],
    cards: Sequence[Card],
    threshold: float | None,
) -> str:
    """The whole page; `kind` is "test" (truth known) or "predict" (no truth columns)."""
    truth = kind == "test"
    title_parts = [dict(run).get("detector"), dict(run).get("category"), f"{kind} report"]
    title = " · ".join(str(p) for p in title_parts if p)
    sections = [
        f"<section><h2>Run</h2>{key_value_table(run, code=('command', 'checkpoint', 'root'))}</section>"
    ]
    if metrics is not None:
        limits = {"aupro_fpr_limit": metrics.get("aupro_fpr_limit") or 0.3}
        rows = [
            (label.format(**limits), number(metrics[k]))
            for k, label in METRIC_ROWS
            if metrics.get(k) is not None
        ]
        sections.append(f"<section><h2>Metrics</h2>{key_value_table(rows)}</section>")
    body = ['<div class="columns">' + "".join(sections) + "</div>"]
    if notes:
        body.append(
            '<section class="notes"><h2>Notes</h2><ul>'
            + "".join(f"<li>{esc(n)}</li>" for n in notes)
            + "</ul></section>"
        )
    if charts:
        figures = "".join(
            f'<figure><a href="{esc(link(src))}"><img src="{esc(link(src))}" alt="{esc(name)}"></a>'
            f"<figcaption>{esc(name)}</figcaption></figure>"
            for name, src in charts
        )
        body.append(f'<section><h2>Charts</h2><div class="charts">{figures}</div></section>')
    grid = "".join(card_html(c, threshold) for c in cards)
    body.append(
        f"<section><h2>{'Test' if truth else 'Predicted'} images ({len(cards)})</h2>"
        f"{controls_html(cards, threshold, truth)}"
        f'<div id="grid" class="grid">{grid}</div></section>'
    )
    panels = [(role, label) for role, label in PANELS.items() if truth or role != "truth"]
    subtitle = f"{len(cards)} images" + (
        f" · operating threshold {threshold:.4g}" if threshold is not None else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>
<main>
{"".join(body)}
</main>
<dialog id="viewer" aria-label="image viewer">
<div class="viewer-head"><span class="title"></span><span class="detail"></span><span class="spacer"></span>
<button class="prev" title="previous (←)">←</button><button class="next" title="next (→)">→</button>
<button class="close" title="close (Esc)">✕</button></div>
<div class="panels"></div>
</dialog>
<script type="application/json" id="panels">{json.dumps(panels)}</script>
<script>{SCRIPT}</script>
</body>
</html>
"""


def write_run_page(report_dir: Path, kind: str, run, metrics, notes, charts, cards, threshold) -> Path:
    """Write report_dir/index.html (atomically); its path. Arguments as in run_page_html."""
    return write_text(
        Path(report_dir) / "index.html", run_page_html(kind, run, metrics, notes, charts, cards, threshold)
    )
