"""`stats` numbers against values worked out by hand on a tiny hand-made category."""

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from mvtec_ad.commands.stats import main as stats_main
from mvtec_ad.data.statistics import category_stats
from mvtec_ad.errors import DataError
from mvtec_ad.report.stats_plots import pairwise_correlation

BLACK, WHITE = (0, 0, 0), (255, 255, 255)
RED, BLUE = (0, 0, 255), (255, 0, 0)  # BGR, as cv2 writes them


def halves(left_bgr, right_bgr, height=2, width=4) -> np.ndarray:
    """A height x width BGR image: left half one colour, right half another."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = left_bgr
    image[:, width // 2 :] = right_bgr
    return image


def flat(bgr, height=2, width=4) -> np.ndarray:
    return halves(bgr, bgr, height, width)


def mask_with(pixels: int, height=2, width=4) -> np.ndarray:
    """A 0/255 mask whose first `pixels` pixels (row-major) are defective."""
    mask = np.zeros(height * width, np.uint8)
    mask[:pixels] = 255
    return mask.reshape(height, width)


def write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


@pytest.fixture
def handmade(tmp_path) -> Path:
    """Category 'handmade': 2 train, 1 test good, 4 defective (2 scratch, 2 dent) images.

    Images are 4 x 2 px except scratch/001 (4 x 4). Luma Y = 0.299 R + 0.587 G + 0.114 B:
      train/000      flat B,G,R = 10,20,30      Y = 21.85                    contrast 0
      train/001      black | white              Y = 127.5                    contrast 127.5
      test/good/000  red | blue                 Y = (76.245 + 29.07) / 2     contrast (76.245 - 29.07) / 2
      scratch/000    gray 200, mask 2 of 8 px   area 2 px = 25 %
      scratch/001    black 4x4, mask 8 of 16 px area 8 px = 50 %
      dent/000       gray 50, empty mask        not averaged (empty)
      dent/001       gray 30, no mask           not averaged (missing)
    """
    cat = tmp_path / "handmade"
    write(cat / "train/good/000.png", flat((10, 20, 30)))
    write(cat / "train/good/001.png", halves(BLACK, WHITE))
    write(cat / "test/good/000.png", halves(RED, BLUE))
    write(cat / "test/scratch/000.png", flat((200, 200, 200)))
    write(cat / "ground_truth/scratch/000_mask.png", mask_with(2))
    write(cat / "test/scratch/001.png", flat(BLACK, height=4))
    write(cat / "ground_truth/scratch/001_mask.png", mask_with(8, height=4))
    write(cat / "test/dent/000.png", flat((50, 50, 50)))
    write(cat / "ground_truth/dent/000_mask.png", mask_with(0))
    write(cat / "test/dent/001.png", flat((30, 30, 30)))
    return tmp_path


RED_Y, BLUE_Y = 0.299 * 255, 0.114 * 255
LUMAS = [21.85, 127.5, (RED_Y + BLUE_Y) / 2, 200, 0, 50, 30]
CONTRASTS = [0, 127.5, (RED_Y - BLUE_Y) / 2, 0, 0, 0, 0]


def test_category_summary_matches_hand_computed_values(handmade):
    summary = category_stats(handmade, "handmade").summary()
    assert summary["train"] == 2 and summary["test_good"] == 1 and summary["test_defective"] == 4
    assert summary["defect_types"] == 2 and summary["defect_type_names"] == "dent;scratch"
    assert (summary["width_min"], summary["width_max"]) == (4, 4)
    assert (summary["height_min"], summary["height_max"]) == (2, 4)
    assert summary["avg_anomaly_area_px"] == pytest.approx((2 + 8) / 2)
    assert summary["avg_anomaly_area_pct"] == pytest.approx((25 + 50) / 2)
    assert summary["masks_empty"] == 1 and summary["masks_missing"] == 1
    assert summary["avg_perceived_brightness"] == pytest.approx(sum(LUMAS) / 7)
    assert summary["avg_contrast"] == pytest.approx(sum(CONTRASTS) / 7)


def test_per_image_values_and_bgr_histogram(handmade):
    stats = category_stats(handmade, "handmade")
    by_name = {(r["split"], Path(r["path"]).parent.name, Path(r["path"]).stem): r for r in stats.images}
    red_blue = by_name[("test", "good", "000")]
    assert red_blue["split"] == "test" and red_blue["label"] == 0
    assert (red_blue["sum_b"], red_blue["sum_g"], red_blue["sum_r"]) == (4 * 255, 0, 4 * 255)
    assert red_blue["brightness_r"] == pytest.approx(127.5) and red_blue["contrast_r"] == pytest.approx(127.5)
    assert red_blue["brightness_g"] == 0 and red_blue["contrast_g"] == 0
    assert red_blue["perceived_brightness"] == pytest.approx(LUMAS[2])
    assert red_blue["contrast"] == pytest.approx(CONTRASTS[2])
    flat_colour = by_name[("train", "good", "000")]
    assert (flat_colour["sum_b"], flat_colour["sum_g"], flat_colour["sum_r"]) == (80, 160, 240)
    assert flat_colour["perceived_brightness"] == pytest.approx(LUMAS[0]) and flat_colour["contrast"] == 0
    scratch = by_name[("test", "scratch", "001")]
    assert (scratch["width"], scratch["height"], scratch["anomaly_area_px"]) == (4, 4, 8)
    assert scratch["anomaly_area_pct"] == pytest.approx(50)
    assert by_name[("test", "dent", "000")]["anomaly_area_px"] == 0  # measured, left out of the averages
    assert by_name[("test", "dent", "001")]["anomaly_area_px"] is None

    # pooled histograms, rows B, G, R: 7 images, 6 x 8 + 16 pixels
    assert stats.histogram.sum(axis=1).tolist() == [64, 64, 64]
    blue = stats.histogram[0]
    assert blue[10] == 8  # train/000
    assert blue[255] == 4 + 4  # white half of train/001, blue half of test/good/000
    assert blue[0] == 4 + 4 + 16  # black half, red half, black scratch/001
    assert stats.histogram[2][30] == 8 + 8  # red of train/000, gray 30 dent/001


def test_stats_main_writes_csv_markdown_and_plots(handmade, tmp_path):
    out = tmp_path / "out"
    stats_main(["--data.root", str(handmade), "--categories", "handmade", "--out", str(out)])
    with (out / "stats.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["category"] == "handmade"
    assert float(rows[0]["avg_perceived_brightness"]) == pytest.approx(sum(LUMAS) / 7)
    with (out / "images.csv").open() as f:
        images = list(csv.DictReader(f))
    assert len(images) == 7 and sum(r["anomaly_area_px"] == "" for r in images) == 4  # 3 good + 1 missing
    markdown = (out / "stats.md").read_text()
    assert "0.299 R + 0.587 G + 0.114 B" in markdown and "RMS contrast" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| handmade"))
    assert [cell.strip() for cell in row.strip("|").split("|")] == [
        "handmade",
        "2",
        "1",
        "4",
        "2",
        "4 × 2–4",
        "5",
        "37.50",
        f"{sum(LUMAS) / 7:.1f}",
        f"{sum(CONTRASTS) / 7:.1f}",
    ]
    assert "empty masks: handmade 1" in markdown and "without a mask: handmade 1" in markdown
    for name in (
        "bgr_density.png",
        "anomaly_area_violin.png",
        "feature_correlation.png",
        "channel_sums_vs_brightness_handmade.png",
    ):
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 100, name


def test_pairwise_correlation_skips_missing_values_and_constant_columns():
    values = np.array(
        [[1.0, 2.0, 5.0, np.nan], [2.0, 4.0, 5.0, 1.0], [3.0, 7.0, 5.0, 3.0], [4.0, 8.0, 5.0, 2.0]]
    )
    result = pairwise_correlation(values)
    assert result[0, 1] == pytest.approx(np.corrcoef(values[:, 0], values[:, 1])[0, 1])
    assert result[0, 3] == pytest.approx(np.corrcoef([2.0, 3.0, 4.0], [1.0, 3.0, 2.0])[0, 1])
    assert np.isnan(result[2]).all() and np.isnan(result[:, 2]).all()  # constant column
    assert result[0, 0] == pytest.approx(1.0) and np.allclose(result, result.T, equal_nan=True)


def test_bad_root_and_category_give_clear_errors(handmade, tmp_path):
    with pytest.raises(DataError, match="Dataset root .*nowhere.* does not exist"):
        stats_main(["--data.root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="No category folders in"):
        stats_main(["--data.root", str(empty), "--out", str(tmp_path / "o")])
    with pytest.raises(
        DataError, match=r"Unknown category 'bottle'.*Categories there: handmade.*--categories"
    ):
        stats_main(
            ["--data.root", str(handmade), "--categories", "handmade,bottle", "--out", str(tmp_path / "o")]
        )
    assert not (tmp_path / "o").exists()  # nothing written before the check
