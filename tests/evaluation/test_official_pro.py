"""AUPRO against a plain NumPy transcription of MVTec AD's official `pro_curve_util.compute_pro` + `trapezoid`.

The transcription keeps the official algorithm step by step (scipy's 8-connected labelling,
regions pooled over all images, FPR over all normal pixels, ties collapsed to the last point,
(0, 0) and (1, 1) appended, linear interpolation at the limit, area / limit), in float64.
"""

from bisect import bisect

import numpy as np
import pytest
import torch
from scipy.ndimage import label

from mvtec_ad.evaluation.metrics import AnomalyMetrics, cumulative_curve, pixel_aupro


def official_compute_pro(anomaly_maps, ground_truth_maps):
    structure = np.ones((3, 3), dtype=int)
    num_ok_pixels = 0
    num_gt_regions = 0
    fp_changes, pro_changes = [], []
    for gt_map in ground_truth_maps:
        labeled, n_components = label(gt_map, structure)
        num_gt_regions += n_components
        ok_mask = labeled == 0
        num_ok_pixels += np.sum(ok_mask)
        fp_change = np.zeros_like(gt_map, dtype=np.int64)
        fp_change[ok_mask] = 1
        pro_change = np.zeros_like(gt_map, dtype=np.float64)
        for k in range(n_components):
            region_mask = labeled == (k + 1)
            pro_change[region_mask] = 1.0 / np.sum(region_mask)
        fp_changes.append(fp_change.ravel())
        pro_changes.append(pro_change.ravel())
    scores = np.concatenate([np.asarray(m, np.float64).ravel() for m in anomaly_maps])
    fp_changes, pro_changes = np.concatenate(fp_changes), np.concatenate(pro_changes)
    sort_idxs = np.argsort(scores)[::-1]
    scores_sorted = scores[sort_idxs]
    fprs = np.cumsum(fp_changes[sort_idxs]).astype(np.float64) / num_ok_pixels
    pros = np.cumsum(pro_changes[sort_idxs]) / num_gt_regions
    keep_mask = np.append(np.diff(scores_sorted) != 0, np.True_)
    fprs, pros = np.clip(fprs[keep_mask], None, 1.0), np.clip(pros[keep_mask], None, 1.0)
    return np.concatenate(([0.0], fprs, [1.0])), np.concatenate(([0.0], pros, [1.0]))


def official_trapezoid(x, y, x_max=None):
    x, y = np.array(x), np.array(y)
    correction = 0.0
    if x_max is not None:
        if x_max not in x:
            ins = bisect(x, x_max)
            assert 0 < ins < len(x)
            y_interp = y[ins - 1] + ((y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1]))
            correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
        mask = x <= x_max
        x, y = x[mask], y[mask]
    return np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction


def official_aupro(maps, masks, limit=0.3):
    fprs, pros = official_compute_pro(maps, masks)
    return official_trapezoid(fprs, pros, x_max=limit) / limit


def random_case(seed: int, sizes):
    """Masks with blobs (some touching only diagonally), maps quantised to one decimal: many ties."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i, (h, w) in enumerate(sizes):
        mask = np.zeros((h, w), np.uint8)
        if i % 3:  # every third image is normal
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
                mask[y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = 1
            mask[0, 0] = mask[1, 1] = 1  # 8-connected: one region, not two
        maps.append(np.round(rng.normal(size=(h, w)) + 1.2 * mask, 1).astype(np.float32))
        masks.append(mask)
    return maps, masks


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_equals_the_official_algorithm(seed, limit):
    maps, masks = random_case(seed, [(20, 20)] * 7)
    ours = pixel_aupro(torch.from_numpy(np.stack(maps)), torch.from_numpy(np.stack(masks)), limit)
    assert ours == pytest.approx(official_aupro(maps, masks, limit), abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_images_of_different_sizes_pool_as_the_official_script_pools_them(seed):
    sizes = [(20, 20), (12, 30), (33, 17), (16, 16), (25, 9), (40, 11)]
    maps, masks = random_case(seed, sizes)
    labels = torch.tensor([int(m.any()) for m in masks])
    metric = AnomalyMetrics()
    for i in range(0, len(maps), 4):  # two batches of per-image tensors
        metric.update(
            torch.tensor([float(m.max()) for m in maps[i : i + 4]]),
            labels[i : i + 4],
            [torch.from_numpy(m) for m in maps[i : i + 4]],
            [torch.from_numpy(m) for m in masks[i : i + 4]],
            torch.arange(i, min(i + 4, len(maps))),
        )
    out = metric.compute()
    assert out["pixel_aupro"] == pytest.approx(official_aupro(maps, masks), abs=1e-6)
    from sklearn.metrics import roc_auc_score

    flat_masks = np.concatenate([m.ravel() for m in masks])
    flat_maps = np.concatenate([m.ravel() for m in maps])
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(flat_masks, flat_maps), abs=1e-9)


def test_pixel_counts_stay_exact_past_float32s_range():
    # 2**24 + 3 pixels: a float32 running count stops at 2**24 (2**24 + 1 is not a float32)
    n = 2**24 + 3
    scores = torch.zeros(n)
    scores[:2] = 1.0
    _, (counts,) = cumulative_curve(scores, torch.ones(n, dtype=torch.bool))
    assert counts.tolist() == [2, n]
