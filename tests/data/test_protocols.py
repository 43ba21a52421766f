"""Validation protocols of the DataModule: deterministic, disjoint from the final test portion, stratified."""

import pytest
import torch

from mvtec_ad.data.datamodule import AnomalyDataModule
from mvtec_ad.data.samples import Sample
from mvtec_ad.data.splits import split_test_val, stratified_folds
from mvtec_ad.errors import ConfigError, DataError
from tests.helpers import datamodule


def paths(dataset) -> list[str]:
    """File paths of a dataset or of a list of samples."""
    return [str(s.path) for s in getattr(dataset, "samples", dataset)]


def test_test_split_is_deterministic_disjoint_and_stratified(tiny_root):
    a = datamodule(tiny_root, protocol="test_split", test_share=0.4, seed=3)
    b = datamodule(tiny_root, protocol="test_split", test_share=0.4, seed=3)
    assert paths(a.test_set) == paths(b.test_set) and paths(a.val_set) == paths(b.val_set)
    official = paths(a.layout.test)
    assert set(paths(a.test_set)).isdisjoint(paths(a.val_set))
    assert sorted(paths(a.test_set) + paths(a.val_set)) == sorted(official)
    assert paths(a.train_set) == paths(a.layout.train)  # protocol (i) trains on all of train/good
    # 4 good + 8 defective (2 per type): 40% of each defect type stays test, at least one each side
    test_defects = sorted(s.defect for s in a.test_set.samples)
    val_defects = sorted(s.defect for s in a.val_set.samples)
    assert test_defects.count("good") == 2 and val_defects.count("good") == 2
    for defect in {s.defect for s in a.layout.test if s.label == 1}:
        assert test_defects.count(defect) == 1 and val_defects.count(defect) == 1
    other = datamodule(tiny_root, protocol="test_split", test_share=0.4, seed=4)
    assert paths(other.val_set) != paths(a.val_set)


def test_folds_partition_the_validation_set_by_label(tiny_root):
    dm = datamodule(tiny_root, protocol="test_split", n_folds=3)
    flat = sorted(i for fold in dm.val_folds() for i in fold)
    assert flat == list(range(len(dm.val_set)))
    labels = [s.label for s in dm.val_set.samples]
    for fold in dm.val_folds():  # 2 good + 6 defective dealt round-robin: every fold gets a defect
        assert any(labels[i] == 1 for i in fold)
    assert stratified_folds([0, 0, 0, 1, 1, 1], 3, seed=0) == stratified_folds([0, 0, 0, 1, 1, 1], 3, seed=0)
    assert all(sorted(labels[i] for i in f) for f in stratified_folds([0, 0, 0, 1, 1, 1], 3, seed=0))
    with pytest.raises(ConfigError, match="n_folds"):
        stratified_folds([0, 1], 0, seed=0)


def test_synthetic_protocol_holds_out_train_and_adds_exact_anomalies(tiny_root):
    dm = datamodule(tiny_root, protocol="synthetic", val_split=0.4, synthetic_share=0.75, seed=1)
    assert paths(dm.test_set) == paths(dm.layout.test)  # the official test split stays whole
    assert set(paths(dm.train_set)).isdisjoint(paths(dm.val_set))
    assert sorted(paths(dm.train_set) + paths(dm.val_set)) == sorted(paths(dm.layout.train))
    n_val = len(dm.val_set)
    assert n_val == round(12 * 0.4)
    labels = [s.label for s in dm.val_set.samples]
    assert sum(labels) == round(n_val * 0.75)
    for i in range(n_val):
        item, again = dm.val_set[i], dm.val_set[i]
        assert torch.equal(item["image"], again["image"]) and item["label"] == labels[i]
        if labels[i]:
            assert item["mask"].sum() > 0
            assert dm.val_set.samples[i].defect == "synthetic_swirl"
            plain = dm.val_set.base[i]["image"]
            changed = (item["image"] != plain).any(0)
            assert changed.any() and not changed[item["mask"][0] == 0].any()  # only inside the mask
        else:
            assert item["mask"].sum() == 0
    again = datamodule(tiny_root, protocol="synthetic", val_split=0.4, synthetic_share=0.75, seed=1)
    assert [s.label for s in again.val_set.samples] == labels
    assert "synthetic" in dm.protocol_description and "75%" in dm.protocol_description


def test_synthetic_kinds_are_dealt_in_turn(tiny_root):
    dm = datamodule(
        tiny_root,
        protocol="synthetic",
        val_split=0.5,
        synthetic_share=1.0,
        synthetic_kinds=["swirl", "cutpaste"],
    )
    kinds = [s.defect for s in dm.val_set.samples]
    assert kinds.count("synthetic_swirl") == 3 and kinds.count("synthetic_cutpaste") == 3


def test_protocol_errors_name_the_option(tiny_root):
    with pytest.raises(ConfigError, match="--data.protocol"):
        AnomalyDataModule(tiny_root, "fabric", protocol="holdout")
    with pytest.raises(ConfigError, match="--data.val_split"):
        datamodule(tiny_root, protocol="synthetic", val_split=0.0)
    with pytest.raises(ConfigError, match="--data.synthetic_kinds"):
        datamodule(tiny_root, protocol="synthetic", synthetic_kinds=["twirl"])
    with pytest.raises(ConfigError, match="--data.test_share"):
        datamodule(tiny_root, protocol="test_split", test_share=1.0)


def test_split_test_val_needs_both_classes_in_test():
    samples = [Sample(f"g{i}.png", 0, "good") for i in range(3)] + [Sample("d.png", 1, "crack", "m.png")]
    with pytest.raises(DataError, match="too few test images"):
        split_test_val(samples, 0.4, seed=0)  # the single defect goes to... one side only


def test_official_protocol_records_itself(tiny_root):
    dm = datamodule(tiny_root)
    assert dm.protocol == "official" and dm.protocol_description.startswith("official")
    assert all(s.label == 0 for s in dm.val_set.samples)
