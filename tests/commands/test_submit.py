"""`python -m mvtec_ad submit` (and `predict` of a private split) on a small MVTec AD 2 tree.

PatchCore's demo config is trained once on the tree (64 px, squash) through the CLI's entry point;
each test then sets the checkpoint's pixel threshold itself (AtomicCheckpointIO, the writer the
Trainer uses), so what is checked does not depend on how training fits that threshold.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from mvtec_ad.checkpoints import load_detector, read_checkpoint
from mvtec_ad.commands.export import detector_class, read_config
from mvtec_ad.data.datamodule import AnomalyDataModule
from mvtec_ad.data.dataset import collate_batch
from mvtec_ad.data.sources.mvtec_ad2 import TEST_SPLITS
from mvtec_ad.evaluation.evaluator import pixel_inputs
from mvtec_ad.runs import AtomicCheckpointIO
from tests.data.sources.mvtec_ad2_tree import AD2_COUNTS, PRIVATE_SHAPE, make_ad2_category
from tests.helpers import main_in_process

CONFIG = "configs/demo/patchcore.yaml"
CATEGORY = "fabric"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset root, checkpoint) of PatchCore trained on the tree's train/good, validated on validation/good."""
    folder = tmp_path_factory.mktemp("ad2")
    root = make_ad2_category(folder / "mvtec_ad_2", CATEGORY)
    main_in_process(
        [
            "fit",
            "--config",
            CONFIG,
            *("--data.root", str(root), "--data.category", CATEGORY, "--data.source", "mvtec_ad2"),
            *("--model.image_size", "64", "--model.resize", "squash"),
            *("--trainer.default_root_dir", str(folder / "run"), "--trainer.logger", "false"),
            *("--trainer.enable_progress_bar", "false"),
        ]
    )
    return root, next((folder / "run" / "checkpoints").glob("*.ckpt"))


def with_pixel_threshold(ckpt: Path, value: float, out: Path) -> Path:
    """A copy of `ckpt` whose pixel threshold is `value` (NaN: none)."""
    checkpoint = read_checkpoint(ckpt, mmap=False)
    checkpoint["state_dict"]["pixel_threshold"] = torch.tensor(value)
    AtomicCheckpointIO().save_checkpoint(checkpoint, out)
    return out


def submit(root: Path, ckpt: Path, out: Path, *splits: str) -> None:
    args = ["submit", "--config", CONFIG, "--ckpt_path", str(ckpt), "--data.root", str(root)]
    args += ["--data.category", CATEGORY, "--out", str(out), "--device", "cpu"]
    main_in_process(args + (["--splits", *splits] if splits else []))


def private_files(out: Path) -> dict[str, set[str]]:
    """Files under each of the two submission folders, relative to the category's folder."""
    return {
        kind: {
            p.relative_to(out / kind / CATEGORY).as_posix() for p in (out / kind).rglob("*") if p.is_file()
        }
        for kind in ("anomaly_images", "anomaly_images_thresholded")
    }


def test_submit_writes_a_float16_map_and_a_mask_per_private_image(fitted, tmp_path):
    root, ckpt = fitted
    out = tmp_path / "submission"
    submit(root, with_pixel_threshold(ckpt, 0.0, tmp_path / "zero.ckpt"), out)  # default: both private splits
    maps = np.concatenate([tifffile.imread(p).ravel() for p in (out / "anomaly_images").rglob("*.tiff")])
    threshold = float(np.median(maps.astype(np.float32)))  # some pixels on each side
    submit(root, with_pixel_threshold(ckpt, threshold, tmp_path / "median.ckpt"), out)  # the same files again

    stems = {"test_private": "regular", "test_private_mixed": "mixed"}
    names = [f"{split}/{i:03d}_{stems[split]}" for split in stems for i in range(AD2_COUNTS[split])]
    assert private_files(out) == {
        "anomaly_images": {f"{n}.tiff" for n in names},
        "anomaly_images_thresholded": {f"{n}.png" for n in names},
    }
    seen = set()
    for name in names:
        height, width = cv2.imread(str(root / CATEGORY / f"{name}.png")).shape[:2]
        anomaly_map = tifffile.imread(out / "anomaly_images" / CATEGORY / f"{name}.tiff")
        mask = np.asarray(Image.open(out / "anomaly_images_thresholded" / CATEGORY / f"{name}.png"))
        assert anomaly_map.dtype == np.float16 and anomaly_map.shape == (height, width) == PRIVATE_SHAPE
        assert mask.dtype == np.uint8 and mask.shape == (height, width)
        assert set(np.unique(mask).tolist()) <= {0, 255}
        # the mask thresholds the float32 map; the TIFF holds it rounded to float16 (half a step either way)
        expected = anomaly_map.astype(np.float32) >= threshold
        boundary = np.abs(anomaly_map.astype(np.float32) - threshold) <= np.spacing(np.abs(anomaly_map))
        assert np.array_equal((mask == 255)[~boundary], expected[~boundary])
        seen |= set(np.unique(mask).tolist())
    assert seen == {0, 255}


def test_submit_maps_are_the_maps_test_evaluates(fitted, tmp_path):
    """test_public's maps (its good/bad folders kept, as MVTec's loader names them) are the maps the pixel
    metrics compare with the masks: the canvas's image part resized to the file's own size."""
    root, ckpt = fitted
    ckpt = with_pixel_threshold(ckpt, 1.0, tmp_path / "one.ckpt")
    submit(root, ckpt, tmp_path / "out", "test_public")
    module = load_detector(
        detector_class(read_config(Path(CONFIG)), Path(CONFIG)), read_checkpoint(ckpt), ckpt
    )
    data = AnomalyDataModule(root=root, category=CATEGORY, source="mvtec_ad2")
    data.bind_input(module.geometry)
    data.setup()
    batch = collate_batch([data.test_set[i] for i in range(len(data.test_set))])
    with torch.no_grad():
        maps, _, resolution = pixel_inputs(module(batch.image, batch.content).map, batch)
    assert resolution == "original" and len(maps) == AD2_COUNTS["good"] + AD2_COUNTS["bad"]
    for path, expected in zip(batch.path, maps, strict=True):
        relative = Path(path).relative_to(root / CATEGORY).with_suffix(".tiff")
        written = tifffile.imread(tmp_path / "out" / "anomaly_images" / CATEGORY / relative)
        assert relative.parts[:2] in {("test_public", "good"), ("test_public", "bad")}
        np.testing.assert_allclose(written.astype(np.float32), expected.numpy(), rtol=1e-3, atol=1e-3)


def test_submit_refuses_a_checkpoint_without_pixel_threshold(fitted, tmp_path, capsys):
    root, ckpt = fitted
    with pytest.raises(SystemExit) as exit_:
        submit(root, with_pixel_threshold(ckpt, float("nan"), tmp_path / "none.ckpt"), tmp_path / "out")
    assert exit_.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "has no pixel threshold" in message and "pixel_method" in message
    assert not (tmp_path / "out").exists()


def test_submit_unknown_split_lists_the_valid_ones(fitted, tmp_path, capsys):
    root, ckpt = fitted
    with pytest.raises(SystemExit) as exit_:
        submit(root, ckpt, tmp_path / "out", "test_privat")
    assert exit_.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "--splits 'test_privat'" in message and all(split in message for split in TEST_SPLITS)


def test_predict_reads_the_private_split_it_is_given(fitted, tmp_path):
    root, ckpt = fitted
    main_in_process(
        [
            "predict",
            *("--config", CONFIG, "--ckpt_path", str(ckpt)),
            *("--data.root", str(root), "--data.category", CATEGORY, "--data.source", "mvtec_ad2"),
            *("--data.predict_split", "test_private_mixed"),
            *("--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"),
        ]
    )
    (table,) = tmp_path.rglob("predictions.csv")
    with table.open() as f:
        rows = list(csv.DictReader(f))
    expected = [root / CATEGORY / "test_private_mixed" / f"{i:03d}_mixed.png" for i in range(2)]
    assert [Path(row["path"]) for row in rows] == expected
