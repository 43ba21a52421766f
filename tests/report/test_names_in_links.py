"""Names with '#', '?', '%' or markup in them: every link of the report pages still reaches its file.

The test and predict pages and results.html are loaded in Chromium (tests/browser.py): pictures
must load (naturalWidth > 0), links must resolve to existing files, and no name may add an
element or run script (an alert would be a dialog; an injected element a count that changed).
"""

from pathlib import Path

import pytest
import torch

from mvtec_ad.commands.benchmark_table import write_results
from mvtec_ad.evaluation.results_table import COLUMNS, OK
from mvtec_ad.report.gallery import Card, Gallery
from mvtec_ad.report.page import link, run_page_html, write_run_page

# folder and file names a camera, a colleague or an attacker could pick (no '/': a name cannot hold one)
ODD_FOLDERS = ("c#1 %25?", "<img src=x onerror=alert(1)>", "\"'><svg onload=alert(2)>")
ODD_FILES = ("a#1.png", "50%25 ?.png", "<img src=x onerror=alert(3)>.png")

IMAGES = "() => Array.from(document.images).map((i) => ({src: i.getAttribute('src'), width: i.naturalWidth}))"
INJECTED = """() => ({scripts: document.scripts.length, svg: document.querySelectorAll('svg').length,
    handlers: document.querySelectorAll('[onerror], [onload]').length,
    stray: Array.from(document.images).filter((i) => i.getAttribute('src') === 'x').length})"""


def test_a_link_percent_encodes_each_segment_of_a_name():
    assert link("thumbs/a#1.jpg") == "thumbs/a%231.jpg"
    assert link("../c#1 %25?/x.png") == "../c%231%20%2525%3F/x.png"
    assert link("javascript:alert(1)") == "javascript%3Aalert%281%29"  # a name, never a scheme
    assert link(Path("full") / "\"'<b>.png") == "full/%22%27%3Cb%3E.png"


def test_names_never_add_markup_to_the_page(tmp_path):
    paths = [f"{folder}/{name}" for folder in ODD_FOLDERS for name in ODD_FILES]
    cards = odd_gallery(tmp_path, paths)
    page = run_page_html("test", [("root", ODD_FOLDERS[1])], None, [], [], cards, 0.5)
    assert "<img src=x" not in page and "<svg" not in page and "'><" not in page
    assert page.count("<img ") == len(paths) and page.count("<script") == 2


def odd_gallery(report_dir: Path, paths: list[str]) -> list[Card]:
    """The cards of a test run over `paths` (each folder a defect type), their pictures drawn."""
    gallery = Gallery(report_dir)
    n = len(paths)
    gallery.add(
        scores=torch.linspace(0, 1, n),
        paths=paths,
        images=torch.rand(n, 3, 16, 24),
        maps=torch.rand(n, 1, 16, 24),
        index=torch.arange(n),
        labels=torch.ones(n),
        masks=torch.zeros(n, 1, 16, 24),
    )
    return gallery.finish(None, threshold=0.5, pixel_threshold=0.5)


def test_pictures_and_panels_of_odd_names_load_on_the_page(tmp_path, browser):
    paths = [f"data/{folder}/{name}" for folder in ODD_FOLDERS for name in ODD_FILES]
    report = tmp_path / "run #1?" / "report"
    cards = odd_gallery(report, paths)
    page_path = write_run_page(report, "test", [("root", "data")], None, [], [], cards, 0.5)
    with browser.open(page_path, height=4000) as opened:
        page, dialogs = opened.page, []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.wait_for_function("() => Array.from(document.images).every((i) => i.complete)")
        thumbs = page.evaluate(IMAGES)
        assert len(thumbs) == len(paths) and all(t["width"] == 24 for t in thumbs), thumbs
        assert opened.missing_files() == []
        for card in range(len(paths)):  # every card's image, heatmap, predicted mask and truth
            page.click(f"#grid .card >> nth={card}")
            page.wait_for_function(
                "() => Array.from(document.querySelectorAll('.panels img')).every((i) => i.complete)"
            )
            panels = page.evaluate(
                "() => Array.from(document.querySelectorAll('.panels img')).map((i) => i.naturalWidth)"
            )
            assert panels == [24] * 4, (card, panels)
            page.keyboard.press("Escape")
        assert page.evaluate(INJECTED) == {"scripts": 2, "svg": 0, "handlers": 0, "stray": 0}
        assert dialogs == [] and opened.errors == []


def result_row(tmp_path: Path, category: str, ok: bool) -> dict:
    """A benchmark row whose run folder (named after its category) holds a report page and a train.log."""
    run_dir = tmp_path / "runs" / "knn" / category / "lightning_logs" / "version_0"
    (run_dir / "report").mkdir(parents=True)
    (run_dir / "report" / "index.html").write_text("<html><body>the run's report</body></html>")
    (run_dir / "train.log").write_text("the run's log")
    return {
        **dict.fromkeys(COLUMNS),
        "detector": "knn",
        "config": "configs/knn.yaml",
        "category": category,
        "status": OK if ok else "failed: out of memory",
        "image_auroc": 0.9 if ok else None,
        "seconds": 1.0,
        "run_dir": str(run_dir),
    }


@pytest.mark.parametrize("ok", [True, False])
def test_results_links_to_runs_of_odd_categories_resolve(tmp_path, browser, ok):
    rows = [result_row(tmp_path, category, ok) for category in ODD_FOLDERS]
    write_results(tmp_path / "results.csv", rows)
    with browser.open(tmp_path / "results.html") as opened:
        page, dialogs = opened.page, []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        assert opened.missing_files() == []
        assert page.evaluate(INJECTED) == {"scripts": 1, "svg": 0, "handlers": 0, "stray": 0}
        headers = page.evaluate(
            "() => Array.from(document.querySelectorAll('table.results:not([hidden]) th')).map((h) => h.textContent)"
        )
        assert headers[1:4] == list(ODD_FOLDERS)
        page.click('table[data-metric="image_auroc"] td a >> nth=0')  # the first category's run
        page.wait_for_load_state("load")
        assert page.inner_text("body") == ("the run's report" if ok else "the run's log")
        assert dialogs == [] and opened.errors == []
