"""report/index.html of a test and a predict run, checked in a real headless Chromium.

One knn is trained and tested on the tiny set (the CLI, as a user runs it); predict then runs on
the same test images with its checkpoint. Each page must load without a console error, hold
one card per image, sort and filter as asked, and link only to files that exist; a screenshot
of each page is written to its run folder.
"""

import csv
import json
from pathlib import Path

import cv2
import pytest
from sklearn.metrics import roc_auc_score

from tests.helpers import TEST_IMAGE_SIZE, cli, main_in_process, tiny_args

CARDS = """() => Array.from(document.querySelectorAll('#grid .card')).filter((c) => !c.hidden).map((c) => ({
    score: Number(c.dataset.score), defect: c.dataset.defect, outcome: c.dataset.outcome, path: c.dataset.path}))"""


@pytest.fixture(scope="module")
def test_run(tiny_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    cli("train", *tiny_args("configs/demo/knn.yaml", tiny_root, out, "--model.num_overlays", "1"))
    (run_dir,) = out.glob("lightning_logs/version_*")
    return run_dir


@pytest.fixture(scope="module")
def predict_run(test_run, tiny_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict")
    main_in_process(
        [
            "predict",
            "--config",
            "configs/demo/knn.yaml",
            "--ckpt_path",
            str(test_run / "checkpoints" / "model.ckpt"),
            "--data.path",
            str(tiny_root / "washer" / "test" / "*" / "*.png"),
            "--trainer.default_root_dir",
            str(out),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    (run_dir,) = out.glob("lightning_logs/version_*")
    return run_dir


def expected_outcome(score: float, defect: str, threshold: float) -> str:
    flagged = score >= threshold
    if defect == "good":
        return "FP" if flagged else "TN"
    return "TP" if flagged else "FN"


def choose(page, select: str, value: str) -> list[dict]:
    page.select_option(select, value)
    return page.evaluate(CARDS)


def test_the_test_page_holds_every_test_image_and_loads_cleanly(test_run, tiny_root, browser):
    metrics = json.loads((test_run / "metrics.json").read_text())
    files = sorted(str(p) for p in (tiny_root / "washer" / "test").glob("*/*.png"))
    with browser.open(test_run / "report" / "index.html") as opened:
        page = opened.page
        cards = page.evaluate(CARDS)
        assert len(cards) == metrics["n_test"] == len(files) == 12
        assert sorted(c["path"] for c in cards) == files
        assert [c["defect"] for c in cards] == [Path(c["path"]).parent.name for c in cards]
        # the scores on the page are the ones behind the metrics: their AUROC is metrics.json's
        truth = [c["defect"] != "good" for c in cards]
        assert roc_auc_score(truth, [c["score"] for c in cards]) == pytest.approx(metrics["image_auroc"])
        threshold = metrics["threshold"]
        assert [c["outcome"] for c in cards] == [
            expected_outcome(c["score"], c["defect"], threshold) for c in cards
        ]
        text = page.inner_text("main")
        for shown in (
            "knn",
            "washer",
            f"{metrics['image_auroc']:.4f}",
            f"{metrics['pixel_aupro']:.4f}",
            "command",
        ):
            assert shown in text, shown
        charts = page.evaluate(
            "() => Array.from(document.querySelectorAll('.charts img')).map((i) => i.naturalWidth)"
        )
        assert charts == [500, 500, 500, 500]  # ROC, PRO, histogram, confusion: loaded, not broken
        assert opened.missing_files() == []
        page.screenshot(path=str(test_run / "report" / "screenshot.png"), full_page=True)
        assert opened.errors == []
    shot = cv2.imread(str(test_run / "report" / "screenshot.png"))
    assert shot.shape[1] == 1280 and shot.shape[0] > 900 and shot.std() > 20


def test_sorting_and_the_defect_and_outcome_filters_change_what_is_shown(test_run, tiny_root, browser):
    threshold = json.loads((test_run / "metrics.json").read_text())["threshold"]
    with browser.open(test_run / "report" / "index.html") as opened:
        page = opened.page
        first = page.evaluate(CARDS)
        assert [c["score"] for c in first] == sorted((c["score"] for c in first), reverse=True)  # default
        ascending = choose(page, "#sort", "score-asc")
        assert [c["score"] for c in ascending] == sorted(c["score"] for c in first)
        assert ascending[0]["path"] == first[-1]["path"] != first[0]["path"]

        crack = choose(page, "#defect", "crack")
        n_crack = len(list((tiny_root / "washer" / "test" / "crack").glob("*.png")))
        assert len(crack) == n_crack > 0 and {c["defect"] for c in crack} == {"crack"}
        assert page.inner_text("#shown") == f"{n_crack} of 12 images"

        choose(page, "#defect", "")
        for outcome in ("TP", "FN", "FP", "TN"):
            shown = choose(page, "#outcome", outcome)
            expected = [c for c in first if expected_outcome(c["score"], c["defect"], threshold) == outcome]
            assert sorted(c["path"] for c in shown) == sorted(c["path"] for c in expected), outcome
        choose(page, "#outcome", "TP")
        assert choose(page, "#defect", "good") == []
        assert page.inner_text("#shown") == "0 of 12 images"
        assert opened.errors == []


def test_a_click_shows_image_heatmap_predicted_mask_and_truth_at_full_size(test_run, browser):
    with browser.open(test_run / "report" / "index.html") as opened:
        page = opened.page
        cards = page.evaluate(CARDS)
        page.click("#grid .card")
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('.panels img')).every((i) => i.complete)"
        )
        panels = page.evaluate(
            """() => Array.from(document.querySelectorAll('.panels figure')).map((f) => ({
                caption: f.querySelector('figcaption').textContent, width: f.querySelector('img').naturalWidth}))"""
        )
        assert [p["caption"] for p in panels] == ["image", "heatmap", "predicted mask", "ground truth"]
        assert [p["width"] for p in panels] == [TEST_IMAGE_SIZE] * 4  # the image as the model saw it
        assert page.inner_text("#viewer .title") == cards[0]["path"]
        page.keyboard.press("ArrowRight")
        assert page.inner_text("#viewer .title") == cards[1]["path"]
        page.keyboard.press("Escape")
        assert page.evaluate("() => document.getElementById('viewer').open") is False
        assert opened.errors == []


def test_the_predict_page_has_verdicts_and_no_truth(predict_run, browser):
    with (predict_run / "predictions.csv").open(newline="") as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    threshold = float(next(iter(rows.values()))["threshold"])
    with browser.open(predict_run / "report" / "index.html") as opened:
        page = opened.page
        cards = page.evaluate(CARDS)
        assert sorted(c["path"] for c in cards) == sorted(rows) and len(cards) == 12
        assert page.query_selector("#defect") is None  # no truth: no defect filter, no truth panel
        for card in cards:
            assert card["outcome"] == ("flagged" if rows[card["path"]]["label"] == "1" else "passed")
            assert float(rows[card["path"]]["score"]) == card["score"]
        flagged = choose(page, "#outcome", "flagged")
        assert [c["path"] for c in flagged] == [c["path"] for c in cards if c["score"] >= threshold]
        choose(page, "#outcome", "")
        page.click("#grid .card")
        captions = page.evaluate(
            "() => Array.from(document.querySelectorAll('.panels figcaption')).map((f) => f.textContent)"
        )
        assert captions == ["image", "heatmap", "predicted mask"]
        assert opened.missing_files() == []
        page.keyboard.press("Escape")
        page.screenshot(path=str(predict_run / "report" / "screenshot.png"), full_page=True)
        assert opened.errors == []
    assert (predict_run / "report" / "screenshot.png").stat().st_size > 10_000
