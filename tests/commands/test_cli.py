"""The CLI as a user runs it: subprocesses of `python -m mvtec_ad`."""

import json
from pathlib import Path

import pytest

from tests.helpers import cli, tiny_args


def small(root: Path, out: Path) -> list[str]:
    return tiny_args(
        "configs/demo/dfr.yaml", root, out, "--data.train_batch_size", "4", "--trainer.max_epochs", "2"
    )


def test_train_then_test_from_checkpoint(tiny_root, tmp_path):
    cli("train", *small(tiny_root, tmp_path / "run"))
    run_dir = tmp_path / "run" / "lightning_logs" / "version_0"
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert trained["category"] == "washer" and trained["n_test"] == 12
    assert (run_dir / "config.yaml").is_file()
    best = run_dir / "checkpoints" / "best.ckpt"
    assert best.is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()

    # a fresh process, model built from the config, everything else from the checkpoint
    cli("test", *small(tiny_root, tmp_path / "again"), "--ckpt_path", str(best))
    tested = json.loads((tmp_path / "again" / "lightning_logs" / "version_0" / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "threshold", "precision"):
        # equal, null included (precision is null when nothing is flagged at the threshold)
        assert tested[key] == (None if trained[key] is None else pytest.approx(trained[key], rel=1e-5)), key


def test_synth_writes_the_demo_layout(tmp_path):
    cli(
        "synth",
        "--out",
        str(tmp_path / "d"),
        "--categories",
        "fabric",
        "--image_size",
        "32",
        "--n_train",
        "3",
        "--n_test_good",
        "2",
        "--n_test_defect",
        "3",
    )
    assert len(list((tmp_path / "d" / "fabric" / "train" / "good").glob("*.png"))) == 3
    assert len(list((tmp_path / "d" / "fabric" / "ground_truth").rglob("*_mask.png"))) == 3


def test_missing_category_error_lists_what_is_there(tiny_root, tmp_path):
    result = cli("fit", *small(tiny_root, tmp_path), "--data.category", "bottle", check=False)
    assert result.returncode != 0
    assert "Category 'bottle' not found" in result.stderr and "fabric, washer" in result.stderr
    assert result.returncode == 2 and "Traceback" not in result.stderr  # the message alone, no stack


def test_missing_root_error_says_how_to_get_data(tmp_path):
    result = cli("fit", *small(tmp_path / "nowhere", tmp_path), check=False)
    assert result.returncode != 0
    assert str(tmp_path / "nowhere") in result.stderr and "synth" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: Dataset root")


def test_weights_error_reaches_the_user_in_one_line(tiny_root, tmp_path):
    result = cli(
        "fit", *small(tiny_root, tmp_path), "--model.weights", str(tmp_path / "missing.pth"), check=False
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: Weights file '{tmp_path / 'missing.pth'}' does not exist" in result.stderr


def test_help_lists_every_verb():
    out = cli("--help").stdout
    for verb in ("fit", "test", "train", "synth", "demo"):
        assert verb in out
