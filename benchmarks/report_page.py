"""How the report page behaves with thousands of images: drawing time, bytes, and the page in Chromium.

    python benchmarks/report_page.py [--images 2000] [--size 224] [--out /tmp/report_bench]

Builds a test run's report (report.gallery + report.page) over synthetic images, maps and masks
(smooth grey images, like photographs of a surface),
then opens it in headless Chromium (tests/browser.py) and prints one table: seconds to stage and
draw the pictures, bytes on disk, HTML size, time to the load event, thumbnails fetched at load
and after scrolling to the end (lazy loading), and the time of a re-sort and of a filter
(measured in the page, layout included).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvtec_ad.report.gallery import Gallery  # noqa: E402
from mvtec_ad.report.page import write_run_page  # noqa: E402
from tests.browser import start_browser  # noqa: E402

DEFECTS = ("good", "crack", "scratch", "hole", "stain")

MEASURE = """async (action) => {
  const grid = document.getElementById('grid');
  const start = performance.now();
  action();
  grid.offsetHeight;  // force the layout the change causes
  await new Promise((r) => requestAnimationFrame(() => r()));
  return performance.now() - start;
}"""


def smooth(coarse: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(
        coarse, size=(size, size), mode="bicubic", align_corners=False
    ).clamp(0, 1)


def build(folder: Path, n: int, size: int, batch: int = 32) -> tuple[float, Path]:
    """Stage and draw n synthetic test images; seconds taken and the page's path."""
    g = torch.Generator().manual_seed(0)
    gallery = Gallery(folder / "report")
    start = time.perf_counter()
    for first in range(0, n, batch):
        count = min(batch, n - first)
        index = torch.arange(first, first + count)
        labels = (index % len(DEFECTS) != 0).long()
        # smooth, like photographs and anomaly maps (white noise would not compress at all)
        images = smooth(torch.rand(count, 1, size // 8, size // 8, generator=g), size).expand(-1, 3, -1, -1)
        maps = smooth(torch.rand(count, 1, size // 16, size // 16, generator=g), size)
        masks = torch.zeros(count, 1, size, size)
        masks[labels.bool(), :, size // 4 : size // 2, size // 4 : size // 2] = 1
        paths = [f"/data/cat/test/{DEFECTS[i % len(DEFECTS)]}/{i:04d}.png" for i in index.tolist()]
        gallery.add(maps.amax((1, 2, 3)), paths, images, maps, index, None, labels, masks)
    cards = gallery.finish(None, threshold=0.999)
    seconds = time.perf_counter() - start
    run = [("detector", "synthetic"), ("images", str(n))]
    page = write_run_page(folder / "report", "test", run, {"n_test": n}, [], [], cards, 0.999)
    return seconds, page


def folder_mb(folder: Path, pattern: str) -> float:
    return sum(p.stat().st_size for p in folder.glob(pattern)) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", default="/tmp/report_bench")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    seconds, page_path = build(out, args.images, args.size)
    report = page_path.parent
    browser, why = start_browser()
    rows = [
        ("images", f"{args.images} at {args.size} px"),
        ("stage + draw pictures", f"{seconds:.1f} s ({1000 * seconds / args.images:.1f} ms/image)"),
        ("thumbnails on disk", f"{folder_mb(report, 'thumbs/*'):.1f} MB"),
        ("full-size panels on disk", f"{folder_mb(report, 'full/*'):.1f} MB"),
        ("index.html", f"{page_path.stat().st_size / 2**20:.2f} MB"),
    ]
    if browser is None:
        rows.append(("browser", f"not measured: {why}"))
    else:
        fetched: list[str] = []

        def count_thumbnails(page) -> None:
            page.on("request", lambda r: "/thumbs/" in r.url and fetched.append(r.url))

        with browser.open(page_path, on_page=count_thumbnails) as opened:
            page = opened.page
            timing = page.evaluate("() => performance.getEntriesByType('navigation')[0].toJSON()")
            page.wait_for_timeout(500)
            at_load = len(fetched)
            sort_ms = page.evaluate(
                MEASURE.replace(
                    "action();",
                    "const s = document.getElementById('sort'); s.value = 'score-asc';"
                    " s.dispatchEvent(new Event('change'));",
                ),
                None,
            )
            filter_ms = page.evaluate(
                MEASURE.replace(
                    "action();",
                    "const s = document.getElementById('defect'); s.value = 'crack';"
                    " s.dispatchEvent(new Event('change'));",
                ),
                None,
            )
            page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
            page.wait_for_timeout(1000)
            errors = list(opened.errors)
        for error in errors[:5]:
            print(error)
        browser.close()
        rows += [
            (
                "DOMContentLoaded / load",
                f"{timing['domContentLoadedEventEnd']:.0f} / {timing['loadEventEnd']:.0f} ms",
            ),
            ("thumbnails fetched at load", f"{at_load} of {args.images}"),
            ("thumbnails after scrolling to the end", f"{len(fetched)}"),
            ("re-sort by score (2,000 cards)", f"{sort_ms:.0f} ms"),
            ("filter by defect type", f"{filter_ms:.0f} ms"),
            ("console errors", str(len(errors))),
        ]
    width = max(len(k) for k, _ in rows)
    print(f"| {'measure':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
    for key, value in rows:
        print(f"| {key:<{width}} | {value} |")


if __name__ == "__main__":
    main()
