"""The report's pictures (gallery.py) and the page's HTML (page.py) without a browser."""

import errno
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mvtec_ad.report.files import DiskFullError
from mvtec_ad.report.gallery import THUMB_SIDE, Card, Gallery, thumbnail
from mvtec_ad.report.page import run_page_html

JET_LOW = np.array([0, 0, 128])  # cv2's JET at 0, as RGB
JET_HIGH = np.array([128, 0, 0])  # and at 255


def batch(scores, maps_value, index, paths, size=(20, 40), labels=None):
    n = len(scores)
    images = torch.full((n, 3, *size), 0.5)
    maps = torch.stack([torch.full((1, *size), float(v)) for v in maps_value])
    masks = torch.zeros(n, 1, *size)
    masks[:, :, :5, :5] = 1
    return {
        "scores": torch.tensor(scores),
        "paths": paths,
        "images": images,
        "maps": maps,
        "index": torch.tensor(index),
        "labels": None if labels is None else torch.tensor(labels),
        "masks": masks if labels is not None else None,
    }


def test_every_image_is_drawn_once_on_one_colour_range_and_staging_is_removed(tmp_path):
    gallery = Gallery(tmp_path / "report")
    paths = ["t/good/000.png", "t/crack/000.png", "t/crack/001.png"]
    gallery.add(**batch([1.0, 5.0], [0.0, 2.0], [0, 1], paths[:2], labels=[0, 1]))
    # a DDP padding repeat of image 1 (same index) and a new image
    gallery.add(**batch([5.0, 3.0], [2.0, 4.0], [1, 2], [paths[1], paths[2]], labels=[1, 1]))
    cards = gallery.finish(None, threshold=2.5, pixel_threshold=1.0)
    assert [c.index for c in cards] == [0, 1, 2]
    assert [c.name for c in cards] == ["good_000", "crack_000", "001"]
    assert [c.outcome(2.5) for c in cards] == ["TN", "TP", "TP"]
    assert not list((tmp_path / "report").glob(".staging-*"))
    for card in cards:
        assert set(card.files) == {"thumb", "image", "heatmap", "predicted", "truth"}
        for relative in card.files.values():
            assert (tmp_path / "report" / relative).is_file(), relative
    # maps 0 and 4 are the run's extremes: the first image's heatmap is JET's low end, the last's its high
    low = cv2.cvtColor(cv2.imread(str(tmp_path / "report" / cards[0].files["heatmap"])), cv2.COLOR_BGR2RGB)
    high = cv2.cvtColor(cv2.imread(str(tmp_path / "report" / cards[2].files["heatmap"])), cv2.COLOR_BGR2RGB)
    grey = np.array([128, 128, 128])
    assert np.abs(low[10, 20].astype(int) - (grey + JET_LOW) // 2).max() <= 2
    assert np.abs(high[10, 20].astype(int) - (grey + JET_HIGH) // 2).max() <= 2
    # the predicted mask is map >= the pixel threshold (1.0): tinted red on image 1 (map 2.0), not on image 0 (0.0)
    marked = [
        cv2.imread(str(tmp_path / "report" / c.files["predicted"]))[10, 20].astype(int) for c in cards[:2]
    ]
    assert marked[1][2] - marked[1][1] > 40 and abs(marked[0][2] - marked[0][1]) <= 4
    truth = cv2.imread(str(tmp_path / "report" / cards[1].files["truth"]))
    assert truth.shape == (20, 40, 3) and truth[2, 2, 1] > truth[15, 30, 1]  # the mask is tinted green


def test_without_a_pixel_threshold_or_truth_there_is_no_predicted_or_truth_panel(tmp_path):
    gallery = Gallery(tmp_path / "report")
    gallery.add(**batch([1.0], [0.5], [0], ["a.png"]))
    (card,) = gallery.finish(None, threshold=None)
    assert set(card.files) == {"thumb", "image", "heatmap"}
    assert (
        card.truth is None
        and card.defect is None
        and card.outcome(None) is None
        and card.verdict(None) is None
    )
    assert card.verdict(0.7) == 1 and card.verdict(1.5) == 0


def test_thumbnails_keep_the_aspect_and_never_enlarge():
    wide = np.zeros((300, 600, 3), np.uint8)
    assert thumbnail(wide).shape == (THUMB_SIDE // 2, THUMB_SIDE, 3)
    small = np.zeros((64, 32, 3), np.uint8)
    assert thumbnail(small).shape == (64, 32, 3)


def test_closing_an_unfinished_gallery_removes_its_staging(tmp_path):
    gallery = Gallery(tmp_path / "report")
    gallery.add(**batch([1.0], [0.5], [0], ["a.png"]))
    assert len(list((tmp_path / "report").glob(".staging-*/*.npz"))) == 1
    gallery.close()
    assert not list((tmp_path / "report").glob(".staging-*"))


def test_the_page_escapes_what_it_shows():
    card = Card(0, 'x/<b>"odd"</b>.png', 1.0, 1, "<b>", (0.0, 1.0), "odd", {"thumb": "thumbs/odd.jpg"})
    page = run_page_html(
        "test", [("command", "python -m mvtec_ad <x>")], {"image_auroc": 0.5}, [], [], [card], 0.5
    )
    assert "<b>" not in page and "&lt;b&gt;" in page and "&lt;x&gt;" in page
    assert page.count('<figure class="card"') == 1


@pytest.mark.parametrize(
    ("truth", "score", "expected"),
    [(1, 3.0, "TP"), (1, 1.0, "FN"), (0, 3.0, "FP"), (0, 1.0, "TN"), (0, 2.0, "FP")],
)
def test_outcome_at_the_threshold(truth, score, expected):
    assert Card(0, "a.png", score, truth, "d", None).outcome(2.0) == expected


def test_an_image_only_detector_gets_image_and_truth_panels(tmp_path):
    gallery = Gallery(tmp_path / "report")
    data = batch([1.0, 2.0], [0.0, 0.0], [0, 1], ["t/good/0.png", "t/crack/0.png"], labels=[0, 1])
    gallery.add(**(data | {"maps": None}))
    cards = gallery.finish(None, threshold=1.5)
    assert [set(c.files) for c in cards] == [{"thumb", "image", "truth"}] * 2
    assert [c.outcome(1.5) for c in cards] == ["TN", "TP"]
    thumb = cv2.imread(str(tmp_path / "report" / cards[0].files["thumb"]))
    assert thumb.shape == (20, 40, 3) and abs(int(thumb.mean()) - 128) <= 2  # the grey image itself


def test_images_without_a_dataset_position_are_numbered_in_order(tmp_path):
    gallery = Gallery(tmp_path / "report")
    for first in (0, 2):
        data = batch([1.0, 2.0], [0.0, 1.0], [0, 0], [f"{first}.png", f"{first + 1}.png"])
        gallery.add(**(data | {"index": None}))
    cards = gallery.finish(None, threshold=None)
    assert [c.index for c in cards] == [0, 1, 2, 3] and [c.name for c in cards] == ["0", "1", "2", "3"]


def test_a_full_disk_while_staging_is_one_line_and_leaves_no_staging(tmp_path, monkeypatch):
    gallery = Gallery(tmp_path / "report")
    gallery.add(**batch([1.0], [0.5], [0], ["a.png"]))
    real_savez = np.savez

    def fills_the_disk(file, **arrays):  # half of the file is written, then the disk is full
        real_savez(file, **arrays)
        Path(file).write_bytes(Path(file).read_bytes()[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", fills_the_disk)
    report = tmp_path / "report"
    with pytest.raises(
        DiskFullError, match=rf"No space left on the device to write the report pictures in '{report}'"
    ):
        gallery.add(**batch([2.0], [0.5], [1], ["b.png"]))
    assert not list(report.iterdir())  # neither the staging folder nor a half-written file
