"""Seeded train/validation hold-outs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvtec_ad.data.samples import Sample
from mvtec_ad.data.splits import split_train_val
from mvtec_ad.errors import ConfigError


def fake_samples(n: int) -> list[Sample]:
    return [Sample(Path(f"train/good/{i:03d}.png"), 0, "good") for i in range(n)]


def test_split_same_seed_same_split():
    samples = fake_samples(20)
    assert split_train_val(samples, 0.2, seed=7) == split_train_val(samples, 0.2, seed=7)


def test_split_different_seed_different_split():
    samples = fake_samples(20)
    vals = {tuple(s.path for s in split_train_val(samples, 0.2, seed=seed)[1]) for seed in (0, 1, 2)}
    assert len(vals) > 1


def test_split_is_a_partition_in_original_order():
    samples = fake_samples(20)
    train, val = split_train_val(samples, 0.25, seed=3)
    assert len(val) == 5 and len(train) == 15
    assert set(train).isdisjoint(val)
    assert sorted(train + val, key=lambda s: s.path) == samples
    # both halves keep the sorted order of the file list
    assert train == [s for s in samples if s in train]
    assert val == [s for s in samples if s in val]


def test_split_zero_gives_empty_val():
    samples = fake_samples(5)
    train, val = split_train_val(samples, 0.0, seed=0)
    assert val == [] and train == samples


def test_split_small_share_holds_out_at_least_one():
    train, val = split_train_val(fake_samples(5), 0.01, seed=0)
    assert len(val) == 1 and len(train) == 4


@pytest.mark.parametrize("val_split", [1.0, -0.1, 1.5])
def test_split_invalid_share_raises(val_split):
    with pytest.raises(ConfigError) as err:
        split_train_val(fake_samples(10), val_split, seed=0)
    assert "val_split" in str(err.value)
    assert str(val_split) in str(err.value)


def test_split_leaving_no_training_image_raises():
    with pytest.raises(ConfigError, match="val_split"):
        split_train_val(fake_samples(1), 0.5, seed=0)
