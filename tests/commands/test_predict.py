"""`python -m mvtec_ad predict` on new images of any size and mode: tables, labels, heatmaps.

A knn is fitted on the tiny set once; predict then runs as a user runs it (a subprocess, or the
same entry point in this process where start-up time would dominate), and its scores are
checked against the checkpoint's model run in this process.
"""

import csv
import glob
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mvtec_ad.data.datamodule import AnomalyDataModule
from mvtec_ad.data.dataset import AnomalyDataset
from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.data.samples import Sample, find_images
from mvtec_ad.errors import DataError
from mvtec_ad.models.knn import KNN
from mvtec_ad.report.gallery import output_stems
from tests.helpers import TEST_IMAGE_SIZE, cli, datamodule, main_in_process, tiny_args

SOURCE = Path("washer") / "test" / "crack" / "000.png"  # a test image of the tiny set


@pytest.fixture(scope="module")
def knn_checkpoint(tiny_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("knn")
    main_in_process(["fit", *tiny_args("configs/demo/knn.yaml", tiny_root, out, "--trainer.logger", "false")])
    return out / "checkpoints" / "model.ckpt"


@pytest.fixture(scope="module")
def new_images(tiny_root, tmp_path_factory) -> Path:
    """A folder as users have them: a test image copied, the same pixels as 16-bit and as RGBA PNG,
    a grayscale PNG, a JPG of another size, and a file that is no image."""
    folder = tmp_path_factory.mktemp("new")
    bgr = cv2.imread(str(tiny_root / SOURCE))
    shutil.copy(tiny_root / SOURCE, folder / "a_copy.png")
    cv2.imwrite(str(folder / "b_deep.png"), bgr.astype(np.uint16) * 257)
    rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    rgba[..., 3] = 128
    cv2.imwrite(str(folder / "c_rgba.png"), rgba)
    cv2.imwrite(str(folder / "d_gray.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "e_wide.jpg"), cv2.resize(bgr, (100, 70)))
    (folder / "notes.txt").write_text("not an image")
    return folder


def predict_args(checkpoint: Path, data_path: Path | str, out: Path, *extra: str) -> list[str]:
    return [
        "predict",
        "--config",
        "configs/demo/knn.yaml",
        "--ckpt_path",
        str(checkpoint),
        "--data.path",
        str(data_path),
        "--trainer.default_root_dir",
        str(out),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def predict(
    checkpoint: Path, data_path: Path | str, out: Path, *extra: str, in_process: bool = False
) -> list[dict]:
    """Run predict; the JSON rows, checked against the CSV rows."""
    args = predict_args(checkpoint, data_path, out, *extra)
    main_in_process(args) if in_process else cli(*args)
    rows = json.loads((out / "predictions.json").read_text())
    with (out / "predictions.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    for row, line in zip(rows, table, strict=True):
        assert line["path"] == row["path"] and float(line["score"]) == row["score"]
        assert line["label"] == ("" if row["label"] is None else str(row["label"]))
    return rows


def checkpoint_scores(checkpoint: Path, paths: list[str]) -> list[float]:
    """The checkpoint's scores of these files, computed in this process at the training image size."""
    model = KNN.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    dataset = AnomalyDataset(
        [Sample(Path(p), -1, "unknown") for p in paths], InputGeometry.of(TEST_IMAGE_SIZE)
    )
    with torch.no_grad():
        return model(torch.stack([dataset[i]["image"] for i in range(len(dataset))])).score.tolist()


def test_scores_labels_and_heatmaps_of_a_folder_of_mixed_images(
    knn_checkpoint, new_images, tiny_root, tmp_path
):
    # a config image size unlike the checkpoint's (refused in favour of the checkpoint's) and no dataset folder
    rows = predict(
        knn_checkpoint,
        new_images,
        tmp_path,
        "--model.image_size",
        "32",
        "--data.root",
        str(tmp_path / "none"),
    )
    names = [Path(row["path"]).name for row in rows]
    assert names == ["a_copy.png", "b_deep.png", "c_rgba.png", "d_gray.png", "e_wide.jpg"]
    scores = [row["score"] for row in rows]
    assert all(math.isfinite(s) for s in scores)
    assert scores == pytest.approx(checkpoint_scores(knn_checkpoint, [row["path"] for row in rows]), rel=1e-5)

    # the copied test image scores as `test` scores it; 16-bit and RGBA versions of its pixels alike
    model = KNN.load_from_checkpoint(knn_checkpoint, map_location="cpu").eval()
    test_data = datamodule(tiny_root, "washer")
    index = [s.path for s in test_data.test_set.samples].index(tiny_root / SOURCE)
    with torch.no_grad():
        test_score = float(model(test_data.test_set[index]["image"][None]).score)
    assert scores[0] == pytest.approx(test_score, rel=1e-5)
    assert scores[1] == pytest.approx(scores[0], rel=1e-6) and scores[2] == pytest.approx(scores[0], rel=1e-6)

    threshold = float(torch.load(knn_checkpoint, weights_only=True)["state_dict"]["threshold"])
    assert math.isfinite(threshold)
    for row in rows:
        assert row["threshold"] == pytest.approx(threshold, rel=1e-7)
        assert row["label"] == int(row["score"] >= threshold)
        for key in ("heatmap", "overlay"):
            picture = cv2.imread(str(tmp_path / row[key]))
            assert picture is not None and picture.shape == (TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, 3), row[key]
    assert rows[0]["heatmap"] == "predictions/a_copy_heatmap.png"

    # the mask: 255 where the map reaches the checkpoint's pixel threshold, its share in the table
    pixel_threshold = float(torch.load(knn_checkpoint, weights_only=True)["state_dict"]["pixel_threshold"])
    assert math.isfinite(pixel_threshold)
    with torch.no_grad():
        amap = model(test_data.test_set[index]["image"][None]).map[0, 0]
    mask = cv2.imread(str(tmp_path / rows[0]["mask"]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (TEST_IMAGE_SIZE, TEST_IMAGE_SIZE) and set(np.unique(mask)) <= {0, 255}
    expected = (amap >= pixel_threshold).numpy()
    assert (mask.astype(bool) != expected).mean() < 0.01  # float rounding at the boundary only
    assert rows[0]["pixel_threshold"] == pytest.approx(pixel_threshold, rel=1e-7)
    assert rows[0]["anomalous_share"] == pytest.approx(float(expected.mean()), abs=0.01)


def test_a_glob_over_folders_and_a_single_file(knn_checkpoint, new_images, tiny_root, tmp_path):
    pattern = str(tiny_root / "washer" / "test" / "*" / "000.png")
    rows = predict(knn_checkpoint, pattern, tmp_path / "glob", in_process=True)
    paths = sorted(glob.glob(pattern))
    assert [row["path"] for row in rows] == paths and len(paths) >= 3
    assert [row["score"] for row in rows] == pytest.approx(checkpoint_scores(knn_checkpoint, paths), rel=1e-5)
    # every image is 000.png: the PNGs are named after their folders
    assert [row["heatmap"] for row in rows] == [
        f"predictions/{Path(p).parent.name}_000_heatmap.png" for p in paths
    ]
    assert all((tmp_path / "glob" / row["overlay"]).is_file() for row in rows)

    single = new_images / "e_wide.jpg"
    (row,) = predict(knn_checkpoint, single, tmp_path / "single", in_process=True)
    assert row["path"] == str(single)
    assert row["score"] == pytest.approx(checkpoint_scores(knn_checkpoint, [str(single)])[0], rel=1e-5)


def test_without_a_threshold_labels_are_null(knn_checkpoint, new_images, tmp_path):
    checkpoint = torch.load(knn_checkpoint, weights_only=True)
    for name in ("threshold", "pixel_threshold"):  # as when no validation data was seen
        checkpoint["state_dict"][name] = torch.tensor(float("nan"))
    torch.save(checkpoint, tmp_path / "no_threshold.ckpt")
    (row,) = predict(
        tmp_path / "no_threshold.ckpt", new_images / "a_copy.png", tmp_path / "run", in_process=True
    )
    assert row["label"] is None and row["threshold"] is None and math.isfinite(row["score"])
    assert row["pixel_threshold"] is None and row["anomalous_share"] is None and row["mask"] is None
    line = (tmp_path / "run" / "predictions.csv").read_text().splitlines()[1]
    assert line == (
        f"{new_images / 'a_copy.png'},{row['score']},,,,,predictions/a_copy_heatmap.png,predictions/a_copy_overlay.png,"
    )
    assert not (tmp_path / "run" / "predictions" / "a_copy_mask.png").exists()


def test_a_missing_path_or_checkpoint_exits_2_naming_it(knn_checkpoint, tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(predict_args(knn_checkpoint, missing, tmp_path))
    assert exit_info.value.code == 2
    assert f"error: --data.path '{missing}' does not exist" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        main_in_process(predict_args(tmp_path / "gone.ckpt", missing, tmp_path))
    assert exit_info.value.code == 2
    assert f"Checkpoint '{tmp_path / 'gone.ckpt'}' (--ckpt_path) does not exist" in capsys.readouterr().err


def test_a_glob_over_folder_links_ends_and_finds_each_image_once(tmp_path):
    """`up -> ..`, `self -> .` and `latest -> .` made glob expand until the path was too long, and
    predicted one image dozens of times; a link to a folder elsewhere is still followed."""
    top = tmp_path / "top"
    (top / "run1").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    for name in ("a.png", "run1/b.png"):
        cv2.imwrite(str(top / name), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "elsewhere" / "c.png"), np.zeros((4, 4, 3), np.uint8))
    (top / "run1" / "up").symlink_to("..")
    (top / "self").symlink_to(".")
    (top / "latest").symlink_to("run1")  # a second path to run1/b.png: kept once, by its own path
    (top / "shared").symlink_to(tmp_path / "elsewhere")
    with pytest.warns(UserWarning, match="lead back into a folder already being searched") as caught:
        found = find_images(f"{top}/**/*.png")
    assert found == [top / "a.png", top / "run1" / "b.png", top / "shared" / "c.png"]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"'{top / 'self'}'" in message and f"'{top / 'run1' / 'up'}'" in message


def test_the_link_safe_glob_finds_what_glob_finds_without_links(tmp_path):
    """Same files as glob.glob on a tree with no links: hidden names, `**` mid-pattern, literal parts."""
    import glob

    from mvtec_ad.data.samples import glob_files

    for name in ("a.png", ".hidden.png", "x/b.png", "x/y/c.png", "x/.h/d.png", "z/y/e.png", "x/y/f.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    for pattern in ("**/*.png", "*/y/*.png", "x/**/*.png", "**/y/*", "x/*/c.png", ".*.png", "**"):
        expected = sorted(p for p in glob.glob(f"{tmp_path}/{pattern}", recursive=True) if Path(p).is_file())
        assert sorted(str(p) for p in glob_files(f"{tmp_path}/{pattern}")) == expected, pattern


def test_find_images_in_a_file_a_folder_and_a_glob(tmp_path):
    top = tmp_path / "top"
    (top / "sub").mkdir(parents=True)
    for name in ("b.png", "a.JPG", "sub/c.png"):
        cv2.imwrite(str(top / name), np.zeros((4, 4, 3), np.uint8))
    (top / "notes.txt").write_text("not an image")
    assert find_images(top) == [top / "a.JPG", top / "b.png"]  # sorted, no subfolders, any case
    assert find_images(top / "b.png") == [top / "b.png"]
    assert find_images(f"{top}/**/*.png") == [top / "b.png", top / "sub" / "c.png"]
    with pytest.raises(DataError, match=f"'{tmp_path / 'gone'}' does not exist"):
        find_images(tmp_path / "gone")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no image file"):
        find_images(tmp_path / "empty")
    with pytest.raises(DataError, match="matches no image file"):
        find_images(f"{top}/*.bmp")


def test_predict_set_needs_no_dataset_folder_and_falls_back_to_test(tiny_root, tmp_path):
    image = tiny_root / SOURCE
    new_only = AnomalyDataModule(root=tmp_path / "missing", path=str(image))
    new_only.bind_input(InputGeometry.of(32))
    new_only.setup("predict")
    batch = next(iter(new_only.predict_dataloader()))
    assert batch.path == [str(image)] and batch.label.tolist() == [-1]
    assert batch.image.shape == (1, 3, 32, 32)

    test_only = AnomalyDataModule(root=tiny_root, category="washer")
    test_only.bind_input(InputGeometry.of(TEST_IMAGE_SIZE))
    test_only.setup("predict")
    assert len(test_only.predict_dataloader().dataset) == len(test_only.test_set) == 12


def test_output_names_are_unique():
    paths = [Path("x/good/000.png"), Path("x/crack/000.png"), Path("y/a.png"), Path("z/good/000.png")]
    assert output_stems(paths) == ["good_000_1", "crack_000", "a", "good_000_2"]


def test_the_checkpoints_geometry_wins_over_the_config_and_says_so(knn_checkpoint, tiny_root, tmp_path):
    result = cli(*predict_args(knn_checkpoint, tiny_root / SOURCE, tmp_path, "--model.image_size", "32"))
    assert f"replace the config's model options: image_size 32 -> {TEST_IMAGE_SIZE}" in result.stderr
    (row,) = json.loads((tmp_path / "predictions.json").read_text())
    assert cv2.imread(str(tmp_path / row["heatmap"])).shape[:2] == (TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
