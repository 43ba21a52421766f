"""Source visa: a fake VisA tree (split_csv/1cls.csv, two objects) read into MVTec-style samples."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.cli import instantiate_class

from mvtec_ad.data.datamodule import AnomalyDataModule
from mvtec_ad.data.decode import decode_mask
from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.data.sources.visa import scan_visa
from mvtec_ad.errors import DataError
from tests.helpers import SIZE, write_image, write_mask

# object -> (train normal, test normal, test anomaly); anomaly masks hold class ids 1, 2, ... or 255
OBJECTS = {"candle": (6, 2, 3), "pcb1": (3, 1, 1)}


def make_visa(root: Path) -> Path:
    """The VisA layout with 32 px images: <object>/Data/Images/{Normal,Anomaly}, Data/Masks/Anomaly."""
    rows = []
    for name, (n_train, n_good, n_anomaly) in OBJECTS.items():
        data = Path(name) / "Data"
        for i in range(n_train + n_good):
            image = data / "Images" / "Normal" / f"{i:04d}.JPG"
            write_image(root / image, value=20 + i)
            rows.append([name, "train" if i < n_train else "test", "normal", image.as_posix(), ""])
        for i in range(n_anomaly):
            image, mask = (
                data / "Images" / "Anomaly" / f"{i:03d}.JPG",
                data / "Masks" / "Anomaly" / f"{i:03d}.png",
            )
            write_image(root / image, value=200 + i)
            write_mask(root / mask, value=[1, 2, 255][i % 3])
            rows.append([name, "test", "anomaly", image.as_posix(), mask.as_posix()])
    (root / "split_csv").mkdir(parents=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["object", "split", "label", "image", "mask"], *rows])
    return root


@pytest.fixture
def visa_root(tmp_path) -> Path:
    return make_visa(tmp_path / "visa")


@pytest.mark.parametrize("name", list(OBJECTS))
def test_each_object_loads_with_its_counts_and_paired_masks(visa_root, name):
    n_train, n_good, n_anomaly = OBJECTS[name]
    layout = scan_visa(visa_root, name)
    assert len(layout.train) == n_train and all(s.label == 0 for s in layout.train)
    assert sum(s.label == 0 for s in layout.test) == n_good
    defective = [s for s in layout.test if s.label == 1]
    assert len(defective) == n_anomaly and layout.has_masks
    for s in defective:
        assert s.path.parent == visa_root / name / "Data" / "Images" / "Anomaly"
        assert s.mask_path == visa_root / name / "Data" / "Masks" / "Anomaly" / f"{s.path.stem}.png"
    assert all(name in s.path.parts for s in layout.train + layout.test)  # no rows of the other object


def test_class_id_masks_count_as_defective(visa_root):
    dm = AnomalyDataModule(root=visa_root, category="candle", source="visa", val_split=0.2)
    dm.bind_input(InputGeometry.of(SIZE))
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (5, 1, 5)
    for i, s in enumerate(dm.test_set.samples):
        if s.label == 1:
            assert decode_mask(s.mask_path).max() == 1  # class ids 1 and 2 binarise like 255
            assert dm.test_set[i]["mask"].sum() == (SIZE // 2) ** 2
    assert dm.category == "candle" and dm.root == visa_root


def test_unknown_object_lists_the_objects(visa_root):
    with pytest.raises(DataError, match="'bottle' is not in .*1cls.csv.*candle, pcb1"):
        scan_visa(visa_root, "bottle")


def test_missing_split_file_says_where_to_get_visa(tmp_path):
    with pytest.raises(DataError, match="split file .*1cls.csv' not found.*spot-diff"):
        scan_visa(tmp_path, "candle")


def test_missing_mask_is_an_error_unless_masks_are_optional(visa_root):
    (visa_root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    with pytest.raises(DataError, match=r"(?s)1 defective test image.*\(candle\).*001.JPG"):
        scan_visa(visa_root, "candle")
    layout = scan_visa(visa_root, "candle", require_masks=False)
    assert sum(s.label for s in layout.test) == 3 and not layout.has_masks


def test_missing_image_names_the_file_and_the_root_option(visa_root):
    (visa_root / "pcb1" / "Data" / "Images" / "Normal" / "0001.JPG").unlink()
    with pytest.raises(DataError, match=r"(?s)1 image\(s\) listed in .*0001.JPG.*--data.root"):
        scan_visa(visa_root, "pcb1")


def test_anomaly_in_train_split_is_refused(visa_root):
    csv_path = visa_root / "split_csv" / "1cls.csv"
    lines = csv_path.read_text().splitlines()
    lines[1] = lines[1].replace(",train,normal,", ",train,anomaly,")
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 2: an anomaly in the train split"):
        scan_visa(visa_root, "candle")


def test_example_config_reads_a_visa_tree(visa_root):
    data = yaml.safe_load(Path("configs/data/visa.yaml").read_text())["data"]
    dm = instantiate_class((), {**data, "init_args": {**data["init_args"], "root": visa_root}})
    dm.bind_input(InputGeometry.of(SIZE))
    dm.setup()
    assert (
        isinstance(dm, AnomalyDataModule)
        and dm.source == "visa"
        and dm.category == "candle"
        and len(dm.test_set) == 5
    )
