"""Every offline demo config builds its detector with the geometry it says (no config rots unparsed)."""

import importlib
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

DEMO_CONFIGS = sorted((REPO / "configs" / "demo").glob("*.yaml"))


@pytest.mark.parametrize("path", DEMO_CONFIGS, ids=lambda p: p.stem)
def test_demo_config_builds_its_detector(path: Path):
    model = yaml.safe_load(path.read_text())["model"]
    module_name, name = model["class_path"].rsplit(".", 1)
    detector = getattr(importlib.import_module(module_name), name)(**model["init_args"])
    args = model["init_args"]
    assert detector.geometry.image_size == args["image_size"]
    assert detector.geometry.resize == args.get("resize", "squash")
    assert detector.model.describe_geometry().get("tile_size") == args.get("tile_size")
