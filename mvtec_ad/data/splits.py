"""Seeded splits of a category's samples: train/validation hold-outs, the test-split protocol, folds.

Every permutation depends only on the seed and the sorted sample list, so a split is the same on
every machine and in every process.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mvtec_ad.data.samples import Sample
from mvtec_ad.errors import ConfigError, DataError


def seeded_order(n: int, seed: int) -> list[int]:
    """A permutation of range(n) that depends only on n and the seed (same on every machine/process)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def split_train_val(
    samples: list[Sample], val_split: float, seed: int, option: str = "--data.val_split"
) -> tuple[list[Sample], list[Sample]]:
    """Seeded hold-out of `val_split` of the normal training images (at least one when > 0).

    The permutation depends only on the seed and the sorted file list, so the split is the same
    on every machine and in every process. `option` is the setting that errors name.
    """
    if not 0.0 <= val_split < 1.0:
        raise ConfigError(f"{option} must be in [0, 1), got {val_split}.")
    n_val = int(round(len(samples) * val_split))
    if val_split > 0:
        n_val = max(1, n_val)
    if n_val >= len(samples):
        raise ConfigError(
            f"{option} {val_split} leaves no training image out of {len(samples)}; use a smaller value."
        )
    val_idx = set(seeded_order(len(samples), seed)[:n_val])
    train = [s for i, s in enumerate(samples) if i not in val_idx]
    val = [s for i, s in enumerate(samples) if i in val_idx]
    return train, val


def split_test_val(samples: list[Sample], test_share: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Protocol (i): split the official test set per defect type; `test_share` stays test, the rest is val.

    Every defect type keeps at least one image on each side when it has two or more, so both
    parts see every kind of defect. Order within each part is the original (sorted) order.
    """
    if not 0.0 < test_share < 1.0:
        raise ConfigError(f"--data.test_share must be in (0, 1), got {test_share}.")
    to_val: set[int] = set()
    for g, defect in enumerate(sorted({s.defect for s in samples})):
        members = [i for i, s in enumerate(samples) if s.defect == defect]
        n_test = int(round(len(members) * test_share))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        order = seeded_order(len(members), seed + 7919 * (g + 1))
        to_val.update(members[j] for j in order[n_test:])
    test = [s for i, s in enumerate(samples) if i not in to_val]
    val = [s for i, s in enumerate(samples) if i in to_val]
    if not any(s.label == 0 for s in test) or not any(s.label == 1 for s in test):
        raise DataError(
            f"--data.protocol test_split with --data.test_share {test_share} leaves a test set without "
            f"normal or without defective images; the category has too few test images for this protocol."
        )
    return test, val


def stratified_folds(labels: Sequence[int], n_folds: int, seed: int) -> list[list[int]]:
    """`n_folds` disjoint folds of range(len(labels)), each label dealt round-robin after a seeded shuffle."""
    if n_folds < 1:
        raise ConfigError(f"--data.n_folds must be at least 1, got {n_folds}.")
    folds: list[list[int]] = [[] for _ in range(n_folds)]
    position = 0
    for label in sorted(set(labels)):
        members = [i for i, lab in enumerate(labels) if lab == label]
        for j in seeded_order(len(members), seed + 104729 * (label + 1)):
            folds[position % n_folds].append(members[j])
            position += 1
    return [sorted(f) for f in folds]


def synthetic_assignment(n_val: int, share: float, kinds: Sequence[str], seed: int) -> dict[int, str]:
    """Which held-out images get a synthetic anomaly (a seeded `share` of them) and of which kind, dealt in turn."""
    from mvtec_ad.data.anomalies import SYNTHETIC_KINDS

    unknown = [k for k in kinds if k not in SYNTHETIC_KINDS]
    if unknown or not kinds:
        raise ConfigError(
            f"--data.synthetic_kinds {list(kinds)} is invalid: use one or more of {list(SYNTHETIC_KINDS)}."
        )
    if n_val == 0:
        raise ConfigError(
            "--data.protocol synthetic needs held-out training images: set --data.val_split above 0 "
            "(the seed's protocol (ii) uses 0.4)."
        )
    n_anomalous = min(max(int(round(n_val * share)), 1), n_val)
    chosen = sorted(seeded_order(n_val, seed + 1)[:n_anomalous])
    return {i: kinds[j % len(kinds)] for j, i in enumerate(chosen)}
