"""The benchmark's results.html: detectors x categories, the best of each column, sorting, links."""

from pathlib import Path

import pytest

from mvtec_ad.commands.benchmark_table import write_results
from mvtec_ad.evaluation.results_table import COLUMNS, OK

ROWS = """(metric) => Array.from(document.querySelector(`table[data-metric="${metric}"]`).tBodies[0].rows).map(
    (r) => Array.from(r.cells).map((c) => ({text: c.textContent, best: c.classList.contains('best'),
    href: c.querySelector('a') ? c.querySelector('a').getAttribute('href') : null})))"""


def row(tmp_path: Path, config: str, category: str, auroc: float | None, seconds: float, rss: float, ok=True):
    run_dir = tmp_path / "runs" / Path(config).stem / category / "lightning_logs" / "version_0"
    (run_dir / "report").mkdir(parents=True)
    (run_dir / "report" / "index.html").write_text("<html>run</html>")
    (run_dir.parent.parent / "train.log").write_text("log")
    return {
        **dict.fromkeys(COLUMNS),
        "detector": Path(config).stem,
        "config": config,
        "category": category,
        "status": OK if ok else "failed: out of memory",
        "image_auroc": auroc,
        "pixel_auroc": None if auroc is None else auroc - 0.1,
        "seconds": seconds,
        "peak_rss_mb": rss,
        "run_dir": str(run_dir if ok else run_dir.parent.parent),
    }


@pytest.fixture
def results(tmp_path) -> Path:
    rows = [
        row(tmp_path, "configs/knn.yaml", "bottle", 0.90, 10, 900),
        row(tmp_path, "configs/knn.yaml", "cable", 0.70, 25, 1000),
        row(tmp_path, "configs/patchcore.yaml", "bottle", 0.95, 30, 2000),
        row(tmp_path, "configs/patchcore.yaml", "cable", None, 40, 3000, ok=False),
        row(tmp_path, "configs/dfr.yaml", "bottle", 0.80, 5, 500),
        row(tmp_path, "configs/dfr.yaml", "cable", 0.85, 6, 600),
    ]
    csv_path = tmp_path / "results.csv"
    write_results(csv_path, rows)
    return csv_path.with_suffix(".html")


def test_results_page_marks_the_best_of_each_column_and_links_each_run(results, browser):
    with browser.open(results) as opened:
        page = opened.page
        table = page.evaluate(ROWS, "image_auroc")
        names = [r[0]["text"] for r in table]
        assert names == ["knnconfigs/knn.yaml", "patchcoreconfigs/patchcore.yaml", "dfrconfigs/dfr.yaml"]
        # columns: detector, bottle, cable, mean, seconds, peak RSS
        cells = {r[0]["text"].split("configs")[0]: r for r in table}
        assert [c["text"] for c in cells["knn"][1:]] == ["0.900", "0.700", "0.800", "35", "1000"]
        assert cells["patchcore"][2]["text"] == "failed" and cells["patchcore"][2]["href"].endswith(
            "train.log"
        )
        best = {name: [i for i, c in enumerate(r) if c["best"]] for name, r in cells.items()}
        # bottle: patchcore 0.95; cable: dfr 0.85; mean: dfr 0.825, not patchcore's 0.95 over one category
        assert best == {"knn": [], "patchcore": [1], "dfr": [2, 3, 4, 5]}
        assert cells["patchcore"][3]["text"] == "0.950 (n=1)"
        assert opened.missing_files() == []
        assert cells["knn"][1]["href"] == "runs/knn/bottle/lightning_logs/version_0/report/index.html"

        page.click('table[data-metric="image_auroc"] th:nth-child(3)')  # cable, best first
        assert [r[0]["text"].split("configs")[0] for r in page.evaluate(ROWS, "image_auroc")] == [
            "dfr",
            "knn",
            "patchcore",  # failed: missing values go last
        ]
        # seconds of the ok runs: fewest first, then reversed
        page.click('table[data-metric="image_auroc"] th:nth-child(5)')
        assert [r[4]["text"] for r in page.evaluate(ROWS, "image_auroc")] == ["11", "30", "35"]
        page.click('table[data-metric="image_auroc"] th:nth-child(5)')
        assert [r[4]["text"] for r in page.evaluate(ROWS, "image_auroc")] == ["35", "30", "11"]

        visible = "() => Array.from(document.querySelectorAll('table.results')).filter((t) => !t.hidden).map((t) => t.dataset.metric)"
        assert page.evaluate(visible) == ["image_auroc"]
        page.select_option("#metric", "pixel_auroc")
        assert page.evaluate(visible) == ["pixel_auroc"]
        assert page.evaluate(ROWS, "pixel_auroc")[0][1]["text"] == "0.800"
        page.screenshot(path=str(results.with_name("results.png")), full_page=True)
        assert opened.errors == []
    assert results.with_name("results.png").stat().st_size > 5_000
