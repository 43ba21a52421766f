"""Metrics against independent references: scikit-learn's AUROC and a plain-loop AUPRO."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import f1_score, roc_auc_score

from mvtec_ad.evaluation.metrics import AnomalyMetrics, binary_auroc, confusion_at, f1_max, pixel_aupro


def reference_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Straight from the definition: a threshold at every distinct score, loops over regions."""
    structure = np.ones((3, 3), dtype=int)  # 8-connectivity, as MVTec's evaluation code
    regions = []
    for m, mask in zip(maps, masks, strict=True):
        labelled, n = ndimage.label(mask, structure=structure)
        regions += [m[labelled == r] for r in range(1, n + 1)]
    normal_scores = maps[masks == 0]
    thresholds = np.unique(maps)[::-1]
    fprs, pros = [0.0], [0.0]
    for t in thresholds:
        fprs.append(float((normal_scores >= t).mean()))
        pros.append(float(np.mean([(r >= t).mean() for r in regions])))
    fprs, pros = np.array(fprs), np.array(pros)
    # integrate up to fpr_limit with linear interpolation at the cut
    keep = fprs <= fpr_limit
    x, y = fprs[keep], pros[keep]
    if x[-1] < fpr_limit:
        j = int(keep.sum())
        y_cut = np.interp(fpr_limit, fprs[j - 1 : j + 1], pros[j - 1 : j + 1])
        x, y = np.append(x, fpr_limit), np.append(y, y_cut)
    return float(np.trapezoid(y, x) / fpr_limit)


def random_maps_and_masks(seed: int, n: int = 6, size: int = 24):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n - 2):  # the last two images are normal
        for _ in range(rng.integers(1, 3)):
            y, x = rng.integers(0, size - 6, 2)
            h, w = rng.integers(2, 6, 2)
            masks[i, y : y + h, x : x + w] = 1
    # scores: noise plus a bump on defects, quantised so that ties occur
    maps = np.round(rng.normal(size=masks.shape) + 1.5 * masks, 1).astype(np.float32)
    return maps, masks


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(size=200) + labels, 1)  # ties on purpose
    ours = binary_auroc(torch.tensor(scores), torch.tensor(labels))
    assert ours == pytest.approx(roc_auc_score(labels, scores), abs=1e-4)


def test_auroc_of_one_class_is_none():
    assert binary_auroc(torch.rand(5), torch.zeros(5)) is None


@pytest.mark.parametrize("seed", range(4))
def test_aupro_equals_reference(seed):
    maps, masks = random_maps_and_masks(seed)
    ours = pixel_aupro(torch.from_numpy(maps), torch.from_numpy(masks))
    assert ours == pytest.approx(reference_aupro(maps, masks), abs=1e-3)


def test_aupro_perfect_and_inverted_maps():
    _, masks = random_maps_and_masks(0)
    perfect = masks.astype(np.float32)
    assert pixel_aupro(torch.from_numpy(perfect), torch.from_numpy(masks)) == pytest.approx(1.0)
    assert pixel_aupro(torch.from_numpy(-perfect), torch.from_numpy(masks)) == pytest.approx(0.0, abs=1e-9)


def test_aupro_weighs_regions_equally():
    # one large region found, one small region missed: PRO = 0.5 at every low FPR
    masks = np.zeros((1, 20, 20), dtype=np.uint8)
    masks[0, 0:10, 0:10] = 1
    masks[0, 15:17, 15:17] = 1
    maps = -np.random.default_rng(0).random((1, 20, 20)).astype(np.float32)  # normal pixels in (-1, 0]
    maps[0, 0:10, 0:10] = 1.0
    maps[0, 15:17, 15:17] = -5.0  # below every normal pixel: found only at FPR 1
    value = pixel_aupro(torch.from_numpy(maps), torch.from_numpy(masks))
    assert value == pytest.approx(reference_aupro(maps, masks), abs=1e-6)
    assert 0.49 < value < 0.51


def test_f1_max_and_confusion():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    scores = torch.tensor([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])
    f1, thr = f1_max(scores, labels)
    best = max(f1_score(labels, scores >= t) for t in scores)
    assert f1 == pytest.approx(best)
    assert thr == pytest.approx(0.5)
    c = confusion_at(scores, labels, 0.55)
    assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (2, 1, 1, 2)
    assert c["precision"] == pytest.approx(2 / 3)
    assert c["specificity"] == pytest.approx(2 / 3)
    assert c["balanced_accuracy"] == pytest.approx(2 / 3)
    assert c["error_rate"] == pytest.approx(2 / 6)


def test_anomaly_metrics_accumulates_batches():
    maps, masks = random_maps_and_masks(1)
    labels = masks.reshape(len(masks), -1).max(1)
    scores = maps.reshape(len(maps), -1).max(1)
    metric = AnomalyMetrics()
    for i in range(0, len(maps), 4):
        metric.update(
            torch.from_numpy(scores[i : i + 4]),
            torch.from_numpy(labels[i : i + 4]),
            torch.from_numpy(maps[i : i + 4, None]),
            torch.from_numpy(masks[i : i + 4, None]).float(),
        )
    out = metric.compute(threshold=1.0)
    assert out["n_test"] == len(maps)
    assert out["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-4)
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-4)
    assert out["pixel_aupro"] == pytest.approx(reference_aupro(maps, masks), abs=1e-3)
    assert out["threshold"] == 1.0
    assert out["recall"] == pytest.approx(float(((scores >= 1.0) & (labels == 1)).sum() / labels.sum()))


def reference_seg_f1(maps: np.ndarray, masks: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """SegF1 as MVTec AD 2 defines it: one F1 of (map >= threshold) against the masks, pooled over all pixels."""
    predicted, truth = maps >= threshold, masks > 0
    tp = np.sum(predicted & truth)
    fp = np.sum(predicted & ~truth)
    fn = np.sum(~predicted & truth)
    return tp / (tp + fp), tp / (tp + fn), 2 * tp / (2 * tp + fp + fn)


@pytest.mark.parametrize("seed", range(3))
def test_seg_f1_pixel_f1_max_and_false_alarm_rate_equal_numpy(seed):
    maps, masks = random_maps_and_masks(seed)
    labels = masks.reshape(len(masks), -1).max(1)
    scores = maps.reshape(len(maps), -1).max(1)
    metric = AnomalyMetrics(fpr_limit=0.05, compute_with_cache=False)  # several thresholds, one update
    metric.update(torch.from_numpy(scores), torch.from_numpy(labels), torch.from_numpy(maps[:, None]),
                  torch.from_numpy(masks[:, None]).float())  # fmt: skip
    assert metric.compute(threshold=2.0, pixel_threshold=0.5)["seg_f1"] == pytest.approx(
        reference_seg_f1(maps, masks, 0.5)[2]
    )
    out = metric.compute(threshold=2.0, pixel_threshold=1.2)
    precision, recall, f1 = reference_seg_f1(maps, masks, 1.2)
    assert out["pixel_threshold"] == 1.2 and out["aupro_fpr_limit"] == 0.05
    assert out["pixel_precision"] == pytest.approx(precision) and out["pixel_recall"] == pytest.approx(recall)
    assert out["seg_f1"] == pytest.approx(f1)
    best = max(reference_seg_f1(maps, masks, t)[2] for t in np.unique(maps))  # the oracle: every threshold
    assert out["pixel_f1_max"] == pytest.approx(best) and out["pixel_f1_max"] >= out["seg_f1"]
    assert out["pixel_aupro"] == pytest.approx(reference_aupro(maps, masks, 0.05), abs=1e-3)
    normal = labels == 0
    assert out["false_alarm_rate"] == pytest.approx(float((scores[normal] >= 2.0).mean()))
    # without a pixel threshold: SegF1 and its parts are null, the oracle is still there
    metric.reset()
    metric.update(torch.from_numpy(scores), torch.from_numpy(labels), torch.from_numpy(maps[:, None]),
                  torch.from_numpy(masks[:, None]).float())  # fmt: skip
    none = metric.compute(threshold=2.0, pixel_threshold=float("nan"))
    assert (
        none["seg_f1"] is None
        and none["pixel_threshold"] is None
        and none["pixel_f1_max"] == pytest.approx(best)
    )


def test_anomaly_metrics_without_threshold_or_masks_reports_none():
    metric = AnomalyMetrics(pixel=False)
    metric.update(torch.tensor([0.1, 0.9]), torch.tensor([0, 1]))
    out = metric.compute(threshold=None)
    assert out["image_auroc"] == 1.0
    assert out["pixel_auroc"] is None and out["pixel_aupro"] is None
    assert out["threshold"] is None and out["precision"] is None


def test_one_sort_pixel_metrics_equal_the_separate_ones():
    from mvtec_ad.evaluation.metrics import label_regions, pixel_metrics
    from tests.evaluation.test_official_pro import official_aupro

    g = torch.Generator().manual_seed(9)
    maps = (torch.rand(6, 40, 40, generator=g) * 20).round() / 20  # many ties
    masks = torch.zeros(6, 40, 40, dtype=torch.bool)
    masks[1, 5:15, 5:12] = masks[3, 20:30, 2:9] = masks[3, 1:4, 30:38] = True
    maps[masks] += 0.3
    regions, sizes = label_regions(masks)
    auroc, aupro = pixel_metrics(maps.flatten(), regions.flatten(), sizes)
    assert auroc == pytest.approx(binary_auroc(maps, masks), abs=1e-12)
    assert aupro == pytest.approx(official_aupro(list(maps.numpy()), list(masks.numpy())), abs=1e-6)
    assert auroc == pytest.approx(roc_auc_score(masks.flatten().numpy(), maps.flatten().numpy()), abs=1e-9)


def test_pixel_curves_draw_what_the_metrics_report():
    from mvtec_ad.evaluation.metrics import label_regions, pixel_curves, pixel_metrics, trapezoid_to

    g = torch.Generator().manual_seed(3)
    maps = torch.rand(4, 50, 50, generator=g)
    masks = torch.zeros(4, 50, 50, dtype=torch.bool)
    masks[0, 10:20, 10:20] = masks[2, 30:45, 5:9] = True
    maps[masks] += 0.4
    regions, sizes = label_regions(masks)
    curves = pixel_curves(maps.flatten(), regions.flatten(), sizes, fpr_limit=0.3, points=200)
    assert (curves.auroc, curves.aupro) == pixel_metrics(maps.flatten(), regions.flatten(), sizes)
    fpr, pro = curves.pro
    assert len(fpr) <= 200 and float(fpr.max()) <= 0.3 + 1e-6 and bool((fpr[1:] >= fpr[:-1]).all())
    assert 0.5 < float(pro[-1]) <= 1.0 and bool((pro[1:] >= pro[:-1]).all())
    # the thinned curve still integrates to about the exact AUPRO
    assert float(trapezoid_to(fpr.double(), pro.double(), 0.3) / 0.3) == pytest.approx(curves.aupro, abs=0.01)
    roc_fpr, tpr = curves.roc
    assert float(roc_fpr[-1]) == 1.0 and float(tpr[-1]) == 1.0
    no_defect = pixel_curves(maps.flatten(), torch.full((maps.numel(),), -1), sizes[:0])
    assert no_defect is None


def test_the_packed_sort_orders_every_float_as_the_float_sort_does():
    """Scores and region ids sorted as one int64 key: negatives, zeros of both signs, infinities,
    subnormals and ties in the same runs, with the same ids, as a float sort with a gather."""
    from mvtec_ad.evaluation.metrics import run_ends, sort_descending_with

    g = torch.Generator().manual_seed(0)
    special = torch.tensor([0.0, -0.0, 1.5, 1.5, -2.0, -2.0, float("inf"), -float("inf"), 1e-40, -1e-40])
    scores = torch.cat([torch.randn(3000, generator=g), special])
    scores = torch.cat([scores, scores[:400]])  # ties
    regions = torch.randint(-1, 50, (len(scores),), generator=g)
    last, ids = sort_descending_with(scores, regions)
    expected, order = torch.sort(scores, descending=True)
    assert torch.equal(last, run_ends(expected))
    start = 0
    for end in last.nonzero().squeeze(1).tolist():  # within a run of equal scores the order is free
        assert sorted(ids[start : end + 1].tolist()) == sorted(regions[order][start : end + 1].tolist())
        start = end + 1
