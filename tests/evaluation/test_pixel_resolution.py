"""Pixel metrics at the ground truth's own resolution (MVTec's way) or the input's, padding left out,
and defined results for test sets the metrics cannot fully judge."""

import pytest
import torch

from mvtec_ad.data.dataset import Batch
from mvtec_ad.evaluation.evaluator import pixel_inputs
from mvtec_ad.evaluation.metrics import AnomalyMetrics


def batch(maps_size, full_mask=None, mask=None, content=None, labels=(1,)) -> Batch:
    n = len(labels)
    return Batch(
        image=torch.zeros(n, 3, *maps_size),
        mask=mask if mask is not None else torch.zeros(n, 1, *maps_size),
        label=torch.tensor(labels),
        path=[f"{i}.png" for i in range(n)],
        index=torch.arange(n),
        content=torch.tensor(content or [list(maps_size)] * n),
        full_mask=full_mask,
    )


def metrics_of(maps, b: Batch) -> dict:
    metric = AnomalyMetrics()
    m, masks, resolution = pixel_inputs(maps, b)
    metric.update(maps.flatten(1).amax(1), b.label, m, masks, b.index)
    return metric.compute() | {"resolution": resolution}


def test_a_thin_defect_is_judged_at_its_own_resolution():
    # a 2x2 map [[1, 0], [0, 0]], upsampled bilinearly to the 4x4 mask: rows/cols [1, .75, .25, 0],
    # so the one defective pixel (1, 1) scores 0.5625 and exactly 3 of the 15 normal pixels score
    # more (1, .75, .75): pixel AUROC = 12 / 15. At the input size the mask, resized to 2x2 by
    # nearest neighbour, loses the defect.
    maps = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    full = torch.zeros(4, 4, dtype=torch.uint8)
    full[1, 1] = 1
    original = metrics_of(maps, batch((2, 2), full_mask=[full]))
    assert original["resolution"] == "original"
    assert original["pixel_auroc"] == pytest.approx(12 / 15)
    at_input = metrics_of(maps, batch((2, 2)))  # the 2x2 mask nearest-resized from `full` is empty
    assert at_input["resolution"] == "input" and at_input["pixel_auroc"] is None


def test_padding_is_left_out_of_the_pixel_metrics():
    # canvas 4x4, the image covers the top two rows; the padding's map values would be false positives
    maps = torch.zeros(1, 1, 4, 4)
    maps[..., 0, 0] = 1.0  # the defect
    maps[..., 2:, :] = 5.0  # padding
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 0, 0] = 1
    full = torch.zeros(2, 4, dtype=torch.uint8)
    full[0, 0] = 1
    for b in (batch((4, 4), mask=mask, content=[[2, 4]]), batch((4, 4), full_mask=[full], content=[[2, 4]])):
        out = metrics_of(maps, b)
        assert out["pixel_auroc"] == pytest.approx(1.0) and out["pixel_aupro"] == pytest.approx(1.0)


def test_empty_defect_masks_and_one_class_test_sets_give_null_and_a_note():
    metric = AnomalyMetrics()
    maps = torch.rand(2, 1, 4, 4)
    with pytest.warns(UserWarning, match="no normal image"):
        metric.update(
            torch.tensor([0.2, 0.9]), torch.tensor([1, 1]), maps, torch.zeros(2, 1, 4, 4), torch.arange(2)
        )
        out = metric.compute()
    assert out["image_auroc"] is None and out["image_f1_max"] is not None
    assert out["pixel_auroc"] is None and out["pixel_aupro"] is None
    assert any("2 defective test image(s) have an empty mask" in n for n in metric.notes)
    assert any("no defective pixel" in n for n in metric.notes)

    only_good = AnomalyMetrics(pixel=False)
    with pytest.warns(UserWarning, match="no defective image"):
        only_good.update(torch.tensor([0.2, 0.9]), torch.tensor([0, 0]))
        out = only_good.compute()
    assert out["image_auroc"] is None and out["image_f1_max"] is None


def test_tied_image_scores_count_half():
    metric = AnomalyMetrics(pixel=False)
    metric.update(torch.tensor([0.5, 0.5, 0.5, 0.9]), torch.tensor([0, 1, 0, 1]))
    # pairs (defect, normal): 0.9 beats both normals, 0.5 ties both: (2 + 2 * 0.5) / 4
    assert metric.compute()["image_auroc"] == pytest.approx(0.75)
