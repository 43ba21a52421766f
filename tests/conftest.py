"""Session-wide fixtures: one tiny demo set (built once) and a small offline DFR."""

from pathlib import Path

import pytest

from mvtec_ad.data.demo import make_demo_dataset

TINY = {"image_size": 64, "n_train": 12, "n_test_good": 4, "n_test_defect": 8}
TEST_IMAGE_SIZE = 64


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The procedural demo set at 64 px, 12 train / 4 good / 8 defective test images per category."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), **TINY)


def tiny_dfr_kwargs() -> dict:
    return {"backbone": "efficientnet_lite0", "layers": ["blocks.2", "blocks.4"], "weights": "imagenet"}
