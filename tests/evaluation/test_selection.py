"""Overlay selection: bounded per group, exact on one process, repeats and overlaps dropped.

The Evaluator feeds every test batch to the selection and to AnomalyMetrics alike: the selection
keeps the pictures, the metrics every score (the charts draw `metrics.curves`), so both are run here.
"""

import torch
from torchmetrics.utilities import dim_zero_cat

from mvtec_ad.evaluation.metrics import AnomalyMetrics
from mvtec_ad.evaluation.selection import GROUPS, OverlaySelection


def fake_batches(scores: list[float], labels: list[int], batch_size: int, size: int = 8):
    """Batches whose image / map / mask encode the dataset index, so kept tensors can be traced."""
    for start in range(0, len(scores), batch_size):
        index = torch.arange(start, min(start + batch_size, len(scores)))
        n = len(index)
        fill = index.float().view(n, 1, 1, 1)
        yield (
            torch.tensor(scores)[index],
            torch.tensor(labels)[index],
            index,
            [f"/data/test/{'good' if labels[i] == 0 else 'crack'}/{i:03d}.png" for i in index.tolist()],
            fill.expand(n, 3, size, size) / 100,
            fill.expand(n, 1, size, size).clone(),
            torch.ones(n, 1, size, size),
        )


def run(scores, labels, k, batch_size=3):
    selection, _ = run_with_metrics(scores, labels, k, batch_size)
    return selection


def run_with_metrics(scores, labels, k, batch_size=3) -> tuple[OverlaySelection, AnomalyMetrics]:
    """The selection and the image metrics fed the same batches, as the Evaluator feeds them."""
    selection, metrics = OverlaySelection(k), AnomalyMetrics(pixel=False)
    for batch in fake_batches(scores, labels, batch_size):
        selection.update(*batch)
        metrics.update(batch[0], batch[1], index=batch[2])
    metrics.compute()
    return selection, metrics


def test_keeps_highest_normals_and_highest_and_lowest_defects():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(40, generator=g).tolist()
    labels = (torch.rand(40, generator=g) < 0.5).long().tolist()
    selection, metrics = run_with_metrics(scores, labels, k=3)
    chosen = selection.selected()
    assert list(chosen) == list(GROUPS)

    normal = sorted((i for i in range(40) if labels[i] == 0), key=lambda i: -scores[i])
    defect = sorted((i for i in range(40) if labels[i] == 1), key=lambda i: -scores[i])
    assert [c.index for c in chosen["worst_normal"]] == normal[:3]
    assert [c.index for c in chosen["best_defect"]] == defect[:3]
    assert [c.index for c in chosen["worst_defect"]] == defect[::-1][:3]
    for group in GROUPS:
        for c in chosen[group]:
            # the kept tensors and facts belong to that image
            assert c.score == scores[c.index] and c.label == labels[c.index]
            assert float(c.map[0, 0]) == c.index and c.map.shape == (8, 8)
            assert round(float(c.image[0, 0, 0]) * 100) == c.index and c.image.shape == (3, 8, 8)
            assert c.path.endswith(f"{c.index:03d}.png")
    assert c.file_name("worst_defect", 2) == f"worst_defect_02_crack_{c.index:03d}.png"
    all_scores, all_labels = metrics.curves.scores, metrics.curves.labels  # what the charts draw
    assert all_scores.tolist() == torch.tensor(scores).tolist() and all_labels.long().tolist() == labels
    assert dim_zero_cat(metrics.index).tolist() == list(range(40))


def test_few_defects_are_not_repeated_in_both_defect_groups():
    scores = [0.1, 0.9, 0.5, 0.3, 0.7]
    labels = [0, 1, 1, 1, 0]
    chosen = run(scores, labels, k=2, batch_size=2).selected()
    assert [c.index for c in chosen["worst_normal"]] == [4, 0]
    assert [c.index for c in chosen["best_defect"]] == [1, 2]
    assert [c.index for c in chosen["worst_defect"]] == [3]  # 2 is already among the best


def test_repeated_dataset_indices_are_kept_once_and_image_only_maps_stay_none():
    selection, metrics = OverlaySelection(2), AnomalyMetrics(pixel=False)
    for index in ([0, 1], [1, 0]):  # DDP padding: the same images again
        i = torch.tensor(index)
        metrics.update(torch.tensor([0.5, 0.8])[i], torch.tensor([0, 0]), index=i)
        selection.update(
            torch.tensor([0.5, 0.8])[i],
            torch.tensor([0, 0]),
            i,
            [f"good/{j}.png" for j in index],
            torch.zeros(2, 3, 4, 4),
            None,
            torch.zeros(2, 1, 4, 4),
        )
    chosen = selection.selected()
    assert [c.index for c in chosen["worst_normal"]] == [1, 0]
    assert all(c.map is None for c in chosen["worst_normal"])
    assert chosen["best_defect"] == [] and chosen["worst_defect"] == []
    assert selection.map_range() == (0.0, 1.0)  # no maps: a neutral range
    assert len(dim_zero_cat(metrics.scores)) == 4  # repeats stay until unique_by_index after gathering
    metrics.compute()
    assert metrics.curves.scores.tolist() == torch.tensor([0.5, 0.8]).tolist()  # each image once, in order


def test_zero_overlays_keeps_nothing_but_the_scores():
    selection, metrics = run_with_metrics([0.2, 0.6, 0.4], [0, 1, 1], k=0)
    assert all(chosen == [] for chosen in selection.selected().values())
    assert metrics.curves.scores.tolist() == torch.tensor([0.2, 0.6, 0.4]).tolist()


def test_kept_tensors_are_copies_not_views_of_the_batch():
    selection = OverlaySelection(1)
    images, maps, masks = torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    selection.update(
        torch.tensor([0.1, 0.9]), torch.tensor([0, 1]), torch.arange(2), ["a", "b"], images, maps, masks
    )
    for tensor in (images, maps, masks):
        tensor.fill_(7.0)  # the loader reuses or frees batch memory; the choice must not change
    chosen = selection.selected()["best_defect"][0]
    assert chosen.image.abs().sum() == 0 and chosen.map.abs().sum() == 0 and chosen.mask.abs().sum() == 0
