"""The shipped configs: seed configs and their offline twins share one recipe, and the defaults run as shipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import cli

REPO = Path(__file__).resolve().parents[1]
# the options a recipe is made of (benchmarks/recipes.py): a seed config and its demo twin differ
# only in backbone, layers, weights and the data's root/category/workers
RECIPE = {
    "patchcore": (
        "image_size",
        "resize",
        "pad",
        "score",
        "score_window",
        "pool_kernel",
        "coarse_pool_kernel",
        "sigma",
        "coreset_ratio",
        "coreset",
        "search",
    ),
    "dfr": ("image_size", "resize", "pad", "pool_kernel", "sigma", "top_k"),
}


def model_args(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["model"]["init_args"]


@pytest.mark.parametrize("detector", sorted(RECIPE))
def test_seed_config_and_demo_twin_share_the_recipe(detector):
    seed, demo = (
        model_args(REPO / "configs" / f"{detector}.yaml"),
        model_args(REPO / "configs" / "demo" / f"{detector}.yaml"),
    )
    for key in RECIPE[detector]:
        assert seed.get(key) == demo.get(key), (detector, key, seed.get(key), demo.get(key))
    if detector == "patchcore":  # README: the default recipe keeps the aspect ratio (squash on squares)
        assert demo["resize"] == "keep_aspect" and demo["score"] == "window_max"
        # both have the coarse bank: the stages one and two strides coarser than the map's finest
        assert len(seed["coarse_layers"]) == len(demo["coarse_layers"]) == 2


@pytest.mark.parametrize("detector", sorted(RECIPE))
def test_default_configs_say_what_their_recipe_was_chosen_on(detector):
    for path in (REPO / "configs" / f"{detector}.yaml", REPO / "configs" / "demo" / f"{detector}.yaml"):
        head = path.read_text().split("\n\n")[0].lower()
        assert "benchmarks/recipes.py" in head and "test split" in head, path


@pytest.mark.parametrize("detector", sorted(RECIPE))
def test_the_default_demo_configs_run_as_shipped_on_the_tiny_set(detector, tiny_root, tmp_path):
    """Train and test at the config's own geometry (no image_size override, unlike the other CLI tests)."""
    out = tmp_path / "run"
    cli(
        "train",
        "--config", f"configs/demo/{detector}.yaml",
        "--data.root", str(tiny_root), "--data.category", "washer",
        "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false",
        "--trainer.max_epochs", "1", "--data.eval_batch_size", "8",
    )  # fmt: skip
    (path,) = out.glob("lightning_logs/version_*/metrics.json")
    metrics = json.loads(path.read_text())
    assert metrics["detector"] == detector and metrics["n_test"] == 12
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "threshold"):
        assert metrics[key] is not None and metrics[key] == metrics[key], key
    (config,) = out.glob("lightning_logs/version_*/config.yaml")
    used = yaml.safe_load(config.read_text())["model"]["init_args"]
    shipped = model_args(REPO / "configs" / "demo" / f"{detector}.yaml")
    for key in RECIPE[detector]:
        assert used[key] == shipped[key], key
