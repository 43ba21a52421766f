"""Test-run pictures: ROC, histogram and confusion charts, overlay panels and the predicted-mask rule."""

import numpy as np
import pytest
import torch

from mvtec_ad.evaluation.metrics import binary_auroc, image_curves, roc_curve
from mvtec_ad.report.charts import (
    FIGURE_SIZE,
    confusion_figure,
    confusion_matrix,
    roc_figure,
    score_histogram,
)
from mvtec_ad.report.overlays import MIN_PANEL_SIZE, overlay_panels, predicted_mask

CHART_SHAPE = (int(FIGURE_SIZE[1] * 100), int(FIGURE_SIZE[0] * 100), 3)
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


def assert_picture(rgb: np.ndarray, shape: tuple[int, ...] = CHART_SHAPE) -> None:
    assert rgb.shape == shape and rgb.dtype == np.uint8
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 10  # drawn, not a blank canvas


def test_roc_curve_points_and_auroc_agree_with_a_hand_count():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    labels = torch.tensor([0, 0, 1, 1])
    fpr, tpr = roc_curve(scores, labels)
    # thresholds 0.8, 0.4, 0.35, 0.1 -> (fpr, tpr) = (0, .5), (.5, .5), (.5, 1), (1, 1)
    assert fpr.tolist() == [0.0, 0.5, 0.5, 1.0] and tpr.tolist() == [0.5, 0.5, 1.0, 1.0]
    assert binary_auroc(scores, labels) == pytest.approx(0.75)
    assert roc_curve(scores, torch.zeros(4)) is None


def test_roc_of_a_perfect_separation_differs_from_a_random_one():
    perfect = roc_figure(image_curves(torch.arange(8.0), LABELS, 3.5))
    shuffled = roc_figure(image_curves(torch.tensor([0.0, 5, 2, 7, 1, 6, 3, 4]), LABELS, 3.5))
    assert_picture(perfect)
    assert_picture(shuffled)
    assert (perfect != shuffled).any(axis=2).mean() > 0.005  # a different curve, not only the title


def test_roc_with_one_class_or_no_threshold_still_draws():
    assert_picture(roc_figure(image_curves(torch.rand(6), torch.zeros(6, dtype=torch.long), 0.5)))
    assert_picture(roc_figure(image_curves(torch.arange(8.0), LABELS, float("nan"))))


def test_histogram_handles_two_classes_all_normal_constant_and_no_threshold():
    both = score_histogram(image_curves(torch.arange(8.0), LABELS, 3.5))
    assert_picture(both)
    all_normal = score_histogram(image_curves(torch.arange(8.0), torch.zeros(8, dtype=torch.long), 3.5))
    assert_picture(all_normal)
    assert (both != all_normal).any()
    assert_picture(score_histogram(image_curves(torch.full((5,), 2.0), torch.zeros(5), float("nan"))))
    # the threshold line is drawn even when it lies beyond every score
    assert_picture(score_histogram(image_curves(torch.arange(8.0), LABELS, 100.0)))


def test_confusion_counts_equal_a_hand_count():
    scores = torch.tensor([0.1, 0.7, 0.2, 0.9, 0.4, 0.5, 0.5])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 0])
    # >= 0.5 predicts defective: normals 0.1 0.2 pass, 0.7 0.5 alarm; defects 0.9 0.5 found, 0.4 missed
    counts = confusion_matrix(image_curves(scores, labels, 0.5))
    assert counts.tolist() == [[2, 2], [1, 2]]  # rows: true normal, defective; cols: predicted
    assert_picture(confusion_figure(image_curves(scores, labels, 0.5)))


def test_confusion_without_threshold_is_a_note_not_a_matrix():
    scores, labels = torch.arange(8.0), LABELS
    with_threshold = confusion_figure(image_curves(scores, labels, 3.5))
    without = confusion_figure(image_curves(scores, labels, float("nan")))
    assert without.shape == CHART_SHAPE and (without != with_threshold).any()

    def blue_cells(rgb: np.ndarray) -> float:  # share of pixels coloured by the 'Blues' colormap
        return float((rgb[..., 2].astype(int) - rgb[..., 0] > 40).mean())

    assert blue_cells(with_threshold) > 0.2 and blue_cells(without) == 0.0


def test_predicted_mask_is_the_map_at_or_above_the_pixel_threshold():
    amap = torch.tensor([[0.1, 0.5], [0.49, 0.9]])
    assert predicted_mask(amap, 0.5).tolist() == [[False, True], [False, True]]
    assert predicted_mask(amap, 0.45).tolist() == [[False, True], [True, True]]
    assert not predicted_mask(amap, 1.0).any()  # nothing above it: an empty mask, whatever the image score
    assert predicted_mask(amap, None) is None
    assert predicted_mask(amap, float("nan")) is None
    assert predicted_mask(amap, float("inf")) is None


def overlay_inputs(size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    image = torch.rand(3, size, size)
    amap = torch.zeros(size, size)
    amap[10:30, 10:30] = 1.0
    mask = torch.zeros(size, size)
    mask[12:28, 12:28] = 1
    return image, amap, mask


def test_overlay_has_four_enlarged_panels_and_marks_predicted_pixels():
    image, amap, mask = overlay_inputs(64)
    caption = ["best_defect #0: crack/001.png", "score 1  flagged anomalous"]
    panel = overlay_panels(image, amap, mask, 0.5, 0.0, 1.0, caption)
    zoom = -(-MIN_PANEL_SIZE // 64)  # 64 px images are shown at 3x
    assert panel.dtype == np.uint8 and panel.shape[1] == 4 * 64 * zoom and panel.shape[0] > 64 * zoom
    # the predicted panel (third) is redder inside the marked square than the image panel
    rows = slice(panel.shape[0] - 64 * zoom + 15 * zoom, panel.shape[0] - 64 * zoom + 25 * zoom)
    image_red = panel[rows, 15 * zoom : 25 * zoom, 0].astype(int)
    predicted_red = panel[rows, 2 * 64 * zoom + 15 * zoom : 2 * 64 * zoom + 25 * zoom, 0].astype(int)
    assert (predicted_red - image_red).mean() > 40
    # nothing predicted when the whole map is below the pixel threshold: that panel shows the plain image
    none = overlay_panels(image, amap, mask, 2.0, 0.0, 1.0, caption)
    plain = none[rows, 2 * 64 * zoom + 15 * zoom : 2 * 64 * zoom + 25 * zoom, 0].astype(int)
    assert (plain == image_red).all()


def test_overlay_without_threshold_shows_a_note_panel_and_image_only_has_two_panels():
    image, amap, mask = overlay_inputs(224)  # large enough: drawn at its own size
    no_threshold = overlay_panels(image, amap, mask, None, 0.0, 1.0, ["x"])
    assert no_threshold.shape[1] == 4 * 224
    predicted = no_threshold[-224:, 2 * 224 : 3 * 224]
    assert (predicted[:20] == 200).all()  # the grey note panel, no image pixels
    image_only = overlay_panels(image, None, mask, 0.5, 0.0, 1.0, ["x"])
    assert image_only.shape[1] == 2 * 224 and image_only.shape[0] == no_threshold.shape[0]
