"""Your own folders through the CLI: the knn demo config with source folder fits, tests, writes metrics.json."""

import json

from mvtec_ad.data.samples import list_images
from tests.helpers import cli, tiny_args

DEFECTS = ("crack", "rust")


def test_folder_datamodule_trains_and_tests_end_to_end(tiny_root, tmp_path):
    washer = tiny_root / "washer"
    cli(
        "train",
        *tiny_args(
            "configs/demo/knn.yaml",
            tiny_root,
            tmp_path / "run",
            "--data.source",
            "folder",
            "--data.good_dir",
            "washer/train/good",
            "--data.defect_dirs",
            "[" + ", ".join(f"washer/test/{d}" for d in DEFECTS) + "]",
            "--data.mask_dirs",
            "[" + ", ".join(f"washer/ground_truth/{d}" for d in DEFECTS) + "]",
            "--data.good_test_share",
            "0.25",
            "--data.eval_batch_size",
            "8",
        ),
    )
    (path,) = (tmp_path / "run").glob("lightning_logs/version_*/metrics.json")
    metrics = json.loads(path.read_text())
    n_good = round(len(list_images(washer / "train" / "good")) * 0.25)
    n_defective = sum(len(list_images(washer / "test" / d)) for d in DEFECTS)
    assert metrics["n_test"] == n_good + n_defective and metrics["n_defective"] == n_defective
    assert metrics["category"] == "washer" and metrics["root"] == str(tiny_root)
    assert "test/good = 25% of washer/train/good" in metrics["protocol_detail"]
    assert metrics["image_auroc"] is not None and metrics["pixel_auroc"] is not None  # masks were paired
