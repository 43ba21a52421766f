"""Data layer: folder scanning and validation, decoding, the cached Dataset, the split and the DataModule.

Every test builds its own tiny MVTec-style category in tmp_path (32 px images) with cv2/numpy.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mvtec_ad.data.datamodule import MVTecDataModule, split_train_val
from mvtec_ad.data.dataset import AnomalyDataset, Batch, DecodeCache, collate_batch, decode_image, decode_mask
from mvtec_ad.data.layout import DatasetError, Sample, find_mask, list_categories, scan_category

SIZE = 32


# ----------------------------------------------------------------------------- helpers


def write_image(path: Path, value: int = 128, size: int | tuple[int, int] = SIZE, channels: int = 3) -> Path:
    """A small uniform image (value varies per file so that decodes can be told apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = (size, size) if isinstance(size, int) else size
    shape = (h, w) if channels == 1 else (h, w, channels)
    assert cv2.imwrite(str(path), np.full(shape, value, dtype=np.uint8))
    return path


def write_mask(path: Path, size: int | tuple[int, int] = SIZE, value: int = 255) -> Path:
    """A mask whose top-left quarter is defective."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = (size, size) if isinstance(size, int) else size
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[: h // 2, : w // 2] = value
    assert cv2.imwrite(str(path), mask)
    return path


def make_category(
    root: Path,
    category: str = "widget",
    n_train: int = 4,
    n_good: int = 2,
    defects: dict[str, int] | None = None,
    masks: bool = True,
) -> Path:
    """<root>/<category>/{train/good, test/good, test/<defect>, ground_truth/<defect>} with 32 px PNGs."""
    defects = {"crack": 2, "scratch": 1} if defects is None else defects
    folder = root / category
    for i in range(n_train):
        write_image(folder / "train" / "good" / f"{i:03d}.png", value=10 + i)
    for i in range(n_good):
        write_image(folder / "test" / "good" / f"{i:03d}.png", value=100 + i)
    for defect, n in defects.items():
        for i in range(n):
            write_image(folder / "test" / defect / f"{i:03d}.png", value=200 + i)
            if masks:
                write_mask(folder / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


@pytest.fixture
def category_root(tmp_path) -> Path:
    """4 train, 2 good test, crack x2 + scratch x1 defective test images with masks."""
    return make_category(tmp_path / "data")


# ----------------------------------------------------------------------------- scan_category


def test_scan_missing_root_names_root_and_synth(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as err:
        scan_category(root, "widget")
    assert str(root) in str(err.value)
    assert "synth" in str(err.value)


def test_scan_missing_category_lists_existing_categories(tmp_path):
    root = tmp_path / "data"
    make_category(root, "zeta")
    make_category(root, "alpha")
    make_category(root, "bottle")  # an official MVTec category: listed first
    (root / "notacategory").mkdir()  # no train/good: not listed
    with pytest.raises(DatasetError) as err:
        scan_category(root, "widget")
    message = str(err.value)
    assert "'widget'" in message
    assert str(root) in message
    assert "bottle, alpha, zeta" in message
    assert "notacategory" not in message
    assert list_categories(root) == ["bottle", "alpha", "zeta"]
    assert list_categories(tmp_path / "nowhere") == []


def test_scan_missing_category_in_empty_root_says_none(tmp_path):
    with pytest.raises(DatasetError, match="none"):
        scan_category(tmp_path, "widget")


def test_scan_no_training_images_names_train_good(tmp_path):
    root = make_category(tmp_path / "data", n_train=0)
    (root / "widget" / "train" / "good").mkdir(parents=True, exist_ok=True)
    (root / "widget" / "train" / "good" / "readme.txt").write_text("not an image")
    with pytest.raises(DatasetError) as err:
        scan_category(root, "widget")
    assert str(root / "widget" / "train" / "good") in str(err.value)


def test_scan_no_test_images_names_test_folder(tmp_path):
    root = make_category(tmp_path / "data", n_good=0, defects={})
    with pytest.raises(DatasetError) as err:
        scan_category(root, "widget")
    assert str(root / "widget" / "test") in str(err.value)


def test_scan_defect_without_mask_is_an_error_naming_the_image(tmp_path):
    root = make_category(tmp_path / "data")
    orphan = write_image(tmp_path / "data" / "widget" / "test" / "dent" / "007.png", value=250)
    with pytest.raises(DatasetError) as err:
        scan_category(root, "widget")
    message = str(err.value)
    assert str(orphan) in message
    assert "1 defective test image(s)" in message
    assert "require_masks" in message
    # images that do have masks are not listed as missing
    assert str(root / "widget" / "test" / "crack" / "000.png") not in message


def test_scan_defect_without_mask_kept_when_masks_not_required(tmp_path):
    root = make_category(tmp_path / "data")
    orphan = write_image(tmp_path / "data" / "widget" / "test" / "dent" / "007.png", value=250)
    layout = scan_category(root, "widget", require_masks=False)
    (sample,) = [s for s in layout.test if s.path == orphan]
    assert sample == Sample(orphan, 1, "dent", None)
    assert layout.has_masks is False
    assert layout.defect_types == ["crack", "dent", "scratch"]
    # the images that have masks still get them
    assert all(s.mask_path is not None for s in layout.test if s.label == 1 and s.defect != "dent")


def test_scan_has_masks_and_without_any_mask(tmp_path):
    assert scan_category(make_category(tmp_path / "a"), "widget").has_masks is True
    layout = scan_category(make_category(tmp_path / "b", masks=False), "widget", require_masks=False)
    assert layout.has_masks is False
    assert all(s.mask_path is None for s in layout.test)
    # only good test images: no defective image, so no pixel metrics either
    assert scan_category(make_category(tmp_path / "c", defects={}), "widget").has_masks is False


def test_scan_labels_defects_masks_and_sorted_order(tmp_path):
    root = tmp_path / "data"
    folder = root / "widget"
    # written out of order on purpose
    for name in ["c.png", "a.png", "b.png"]:
        write_image(folder / "train" / "good" / name)
    for name in ["y.png", "x.png"]:
        write_image(folder / "test" / "good" / name)
    for defect in ["scratch", "crack"]:
        for name in ["2.png", "1.png"]:
            write_image(folder / "test" / defect / name)
            write_mask(folder / "ground_truth" / defect / name.replace(".png", "_mask.png"))

    layout = scan_category(root, "widget")
    assert layout.root == root and layout.category == "widget"
    assert [s.path.name for s in layout.train] == ["a.png", "b.png", "c.png"]
    assert all(s.label == 0 and s.defect == "good" and s.mask_path is None for s in layout.train)
    assert [(s.path.parent.name, s.path.name, s.label) for s in layout.test] == [
        ("crack", "1.png", 1),
        ("crack", "2.png", 1),
        ("good", "x.png", 0),
        ("good", "y.png", 0),
        ("scratch", "1.png", 1),
        ("scratch", "2.png", 1),
    ]
    for s in layout.test:
        if s.label == 1:
            assert s.defect == s.path.parent.name
            assert s.mask_path == folder / "ground_truth" / s.defect / f"{s.path.stem}_mask.png"
        else:
            assert s.defect == "good" and s.mask_path is None
    assert layout.defect_types == ["crack", "scratch"]
    # a second scan gives exactly the same samples
    again = scan_category(root, "widget")
    assert again.train == layout.train and again.test == layout.test


def test_scan_accepts_image_extensions_and_ignores_other_files(tmp_path):
    root = tmp_path / "data"
    train = root / "widget" / "train" / "good"
    for name in ["a.png", "b.jpg", "c.bmp", "d.tif", "e.JPG"]:
        write_image(train / name)
    (train / "notes.txt").write_text("hello")
    (train / "f.png.bak").write_bytes(b"x")
    (train / "subdir.png").mkdir()  # a folder with an image-like name is not an image
    write_image(root / "widget" / "test" / "good" / "g.png")
    layout = scan_category(root, "widget")
    assert [s.path.name for s in layout.train] == ["a.png", "b.jpg", "c.bmp", "d.tif", "e.JPG"]


def test_find_mask_conventions(tmp_path):
    gt = tmp_path / "ground_truth"
    image = tmp_path / "test" / "crack" / "003.png"
    assert find_mask(gt, "crack", image) is None
    plain = write_mask(gt / "crack" / "003.bmp")  # <stem>.<ext> fallback
    assert find_mask(gt, "crack", image) == plain
    mvtec = write_mask(gt / "crack" / "003_mask.png")  # MVTec naming wins
    assert find_mask(gt, "crack", image) == mvtec
    assert find_mask(gt, "scratch", image) is None  # looks in the defect's own folder only


# ----------------------------------------------------------------------------- decode_image / decode_mask


def test_decode_grayscale_png_gives_three_equal_channels(tmp_path):
    gray = np.arange(SIZE * 24, dtype=np.uint16).reshape(SIZE, 24) % 256
    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), gray.astype(np.uint8))
    rgb = decode_image(path)
    assert rgb.shape == (SIZE, 24, 3)
    assert rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], gray)


def test_decode_bgr_png_is_returned_as_rgb(tmp_path):
    bgr = np.zeros((4, 5, 3), dtype=np.uint8)
    bgr[...] = (10, 20, 30)  # B, G, R
    path = tmp_path / "colour.png"
    cv2.imwrite(str(path), bgr)
    rgb = decode_image(path)
    assert rgb.shape == (4, 5, 3)
    assert tuple(rgb[0, 0]) == (30, 20, 10)


def test_decode_rgba_png_drops_alpha_and_keeps_colour(tmp_path):
    bgra = np.zeros((4, 4, 4), dtype=np.uint8)
    bgra[...] = (10, 20, 200, 255)  # B, G, R, A
    bgra[1, 2] = (255, 0, 0, 0)  # pure blue, transparent
    path = tmp_path / "rgba.png"
    cv2.imwrite(str(path), bgra)
    rgb = decode_image(path)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert tuple(int(v) for v in rgb[0, 0]) == (200, 20, 10)
    assert tuple(int(v) for v in rgb[1, 2]) == (0, 0, 255)


def test_decode_16bit_grayscale_png_scales_to_8bit(tmp_path):
    img = np.zeros((2, 3), dtype=np.uint16)
    img[0, 0] = 65535
    img[0, 1] = 257 * 100
    img[0, 2] = 257
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), img)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16  # really a 16-bit file
    rgb = decode_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert list(rgb[0, :, 0]) == [255, 100, 1]
    assert list(rgb[1, :, 1]) == [0, 0, 0]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_decode_16bit_colour_png(tmp_path):
    bgr = np.zeros((2, 2, 3), dtype=np.uint16)
    bgr[...] = (0, 257 * 50, 65535)  # B, G, R
    path = tmp_path / "deep_colour.png"
    cv2.imwrite(str(path), bgr)
    rgb = decode_image(path)
    assert rgb.dtype == np.uint8
    assert tuple(int(v) for v in rgb[1, 1]) == (255, 50, 0)


def test_decode_corrupt_file_raises_naming_it(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes())
    with pytest.raises(DatasetError) as err:
        decode_image(path)
    assert str(path) in str(err.value)
    with pytest.raises(DatasetError) as err:
        decode_mask(path)
    assert str(path) in str(err.value)


def test_decode_missing_file_raises_naming_it(tmp_path):
    path = tmp_path / "gone.png"
    with pytest.raises(DatasetError) as err:
        decode_image(path)
    assert str(path) in str(err.value)


def test_decode_mask_any_nonzero_is_one(tmp_path):
    mask = np.array([[0, 1, 2], [127, 255, 0]], dtype=np.uint8)
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), mask)
    out = decode_mask(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1, 1], [1, 1, 0]])


def test_decode_mask_three_channels(tmp_path):
    mask = np.zeros((3, 3, 3), dtype=np.uint8)
    mask[0, 0] = (255, 255, 255)
    mask[1, 1] = (0, 0, 7)  # only one channel set still counts
    path = tmp_path / "m3.png"
    cv2.imwrite(str(path), mask)
    out = decode_mask(path)
    assert out.shape == (3, 3)
    np.testing.assert_array_equal(out, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_decode_mask_16bit(tmp_path):
    mask = np.array([[0, 1], [65535, 0]], dtype=np.uint16)
    path = tmp_path / "m16.png"
    cv2.imwrite(str(path), mask)
    np.testing.assert_array_equal(decode_mask(path), [[0, 1], [1, 0]])


def test_decode_mask_rgba_ignores_alpha(tmp_path):
    mask = np.zeros((3, 3, 4), dtype=np.uint8)
    mask[..., 3] = 255  # fully opaque
    mask[1, 1, :3] = 255  # one white (defective) pixel
    path = tmp_path / "rgba_mask.png"
    cv2.imwrite(str(path), mask)
    np.testing.assert_array_equal(decode_mask(path), [[0, 0, 0], [0, 1, 0], [0, 0, 0]])


# ----------------------------------------------------------------------------- AnomalyDataset / DecodeCache


def test_dataset_resizes_mixed_sizes_and_scales_to_unit_range(tmp_path):
    root = tmp_path / "data"
    folder = root / "widget"
    write_image(folder / "train" / "good" / "a.png", value=255, size=(20, 40))  # mixed up/down
    write_image(folder / "train" / "good" / "b.png", value=0, size=(64, 48))  # shrink
    write_image(folder / "train" / "good" / "c.png", value=51, size=(16, 16), channels=1)  # enlarge, gray
    write_image(folder / "test" / "crack" / "000.png", value=200, size=(48, 48))
    write_mask(folder / "ground_truth" / "crack" / "000_mask.png", size=(48, 48), value=17)
    layout = scan_category(root, "widget")

    train = AnomalyDataset(layout.train, image_size=SIZE)
    assert len(train) == 3
    for i, expected in enumerate([1.0, 0.0, 0.2]):
        item = train[i]
        assert item["image"].shape == (3, SIZE, SIZE)
        assert item["image"].dtype == torch.float32
        assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
        torch.testing.assert_close(item["image"], torch.full((3, SIZE, SIZE), expected), atol=1e-6, rtol=0)
        assert item["label"] == 0
        assert item["path"] == str(layout.train[i].path)
        # no mask file: all-zero mask at the right size
        assert item["mask"].shape == (1, SIZE, SIZE) and item["mask"].dtype == torch.float32
        assert float(item["mask"].abs().sum()) == 0.0

    test = AnomalyDataset(layout.test, image_size=SIZE)
    item = test[0]
    assert item["label"] == 1
    mask = item["mask"]
    assert mask.shape == (1, SIZE, SIZE) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, 1.0}  # binary after resize
    expected = torch.zeros(1, SIZE, SIZE)
    expected[:, : SIZE // 2, : SIZE // 2] = 1.0
    torch.testing.assert_close(mask, expected)


def test_dataset_decodes_each_file_once(category_root):
    layout = scan_category(category_root, "widget")
    cache = DecodeCache()
    ds = AnomalyDataset(layout.test, image_size=16, cache=cache)
    n_masks = sum(s.mask_path is not None for s in layout.test)
    first = [ds[i] for i in range(len(ds))]
    assert cache.decodes == len(ds) + n_masks
    second = [ds[i] for i in range(len(ds))]
    assert cache.decodes == len(ds) + n_masks  # the second epoch reads from memory
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a["image"], b["image"])
        torch.testing.assert_close(a["mask"], b["mask"])
    # a different size is a different entry (image and mask of a defective sample)
    assert layout.test[0].mask_path is not None
    AnomalyDataset(layout.test[:1], image_size=8, cache=cache)[0]
    assert cache.decodes == len(ds) + n_masks + 2


def test_transform_cannot_corrupt_the_cache(category_root):
    layout = scan_category(category_root, "widget")
    cache = DecodeCache()

    def vandal(image, mask):
        image.mul_(0.0)
        mask.add_(5.0)
        return image, mask

    defective = [s for s in layout.test if s.label == 1][:1]
    AnomalyDataset(defective, SIZE, transform=vandal, cache=cache)[0]
    clean = AnomalyDataset(defective, SIZE, cache=cache)[0]
    assert float(clean["image"].max()) > 0.5  # value 200 / 255
    assert set(clean["mask"].unique().tolist()) == {0.0, 1.0}


def test_transform_is_applied(category_root):
    layout = scan_category(category_root, "widget")
    ds = AnomalyDataset(layout.train, SIZE, transform=lambda im, m: (im.flip(-1) * 0 + 0.5, m + 1))
    item = ds[0]
    torch.testing.assert_close(item["image"], torch.full((3, SIZE, SIZE), 0.5))
    torch.testing.assert_close(item["mask"], torch.ones(1, SIZE, SIZE))


def test_collate_batch_shapes_and_dtypes(category_root):
    layout = scan_category(category_root, "widget")
    ds = AnomalyDataset(layout.test, image_size=SIZE)
    batch = collate_batch([ds[i] for i in range(len(ds))])
    n = len(layout.test)
    assert isinstance(batch, Batch)
    assert len(batch) == n
    assert batch.image.shape == (n, 3, SIZE, SIZE) and batch.image.dtype == torch.float32
    assert batch.mask.shape == (n, 1, SIZE, SIZE) and batch.mask.dtype == torch.float32
    assert batch.label.dtype == torch.long
    assert batch.label.tolist() == [s.label for s in layout.test]
    assert batch.path == [str(s.path) for s in layout.test]


# ----------------------------------------------------------------------------- split_train_val


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
    with pytest.raises(DatasetError) as err:
        split_train_val(fake_samples(10), val_split, seed=0)
    assert "val_split" in str(err.value)
    assert str(val_split) in str(err.value)


def test_split_leaving_no_training_image_raises():
    with pytest.raises(DatasetError, match="val_split"):
        split_train_val(fake_samples(1), 0.5, seed=0)


# ----------------------------------------------------------------------------- MVTecDataModule


def test_datamodule_loaders_yield_batches(category_root):
    dm = MVTecDataModule(
        root=category_root,
        category="widget",
        image_size=16,
        train_batch_size=2,
        eval_batch_size=3,
        val_split=0.25,
        seed=1,
    )
    assert dm.has_masks is False  # not set up yet
    dm.setup("fit")
    assert dm.has_masks is True
    assert len(dm.train_set) == 3 and len(dm.val_set) == 1 and len(dm.test_set) == 5
    train_paths = {str(s.path) for s in dm.train_set.samples}
    val_paths = {str(s.path) for s in dm.val_set.samples}
    assert train_paths.isdisjoint(val_paths)
    assert train_paths | val_paths == {str(s.path) for s in dm.layout.train}

    train_batches = list(dm.train_dataloader())
    assert [len(b) for b in train_batches] == [2, 1]
    for b in train_batches:
        assert isinstance(b, Batch)
        assert b.image.shape[1:] == (3, 16, 16) and b.mask.shape[1:] == (1, 16, 16)
        assert (b.label == 0).all()
    assert {p for b in train_batches for p in b.path} == train_paths

    (val_batch,) = list(dm.val_dataloader())
    assert val_batch.path == sorted(val_paths)

    test_batches = list(dm.test_dataloader())
    assert [len(b) for b in test_batches] == [3, 2]
    labels = torch.cat([b.label for b in test_batches])
    assert set(labels.tolist()) == {0, 1}
    assert int((labels == 1).sum()) == 3 and int((labels == 0).sum()) == 2
    masks = torch.cat([b.mask for b in test_batches])
    assert masks[labels == 1].sum(dim=(1, 2, 3)).gt(0).all()
    assert masks[labels == 0].sum() == 0

    feature_paths = [p for b in dm.feature_dataloader() for p in b.path]
    assert feature_paths == [str(s.path) for s in dm.train_set.samples]  # unshuffled, in order
    assert [p for b in dm.predict_dataloader() for p in b.path] == [str(s.path) for s in dm.layout.test]


def test_datamodule_split_depends_only_on_seed(tmp_path):
    root = make_category(tmp_path / "data", n_train=20, n_good=1, defects={"crack": 1})

    def val_paths(seed: int) -> list[str]:
        dm = MVTecDataModule(root=root, category="widget", image_size=8, val_split=0.2, seed=seed)
        dm.setup()
        return [str(s.path) for s in dm.val_set.samples]

    assert len(val_paths(0)) == 4
    assert val_paths(0) == val_paths(0)
    assert len({tuple(val_paths(s)) for s in (0, 1, 2)}) > 1


def test_datamodule_val_split_zero_and_invalid(category_root):
    dm = MVTecDataModule(root=category_root, category="widget", image_size=8, val_split=0.0)
    dm.setup()
    assert len(dm.val_set) == 0 and len(dm.train_set) == 4
    assert list(dm.val_dataloader()) == []
    with pytest.raises(DatasetError, match="val_split"):
        MVTecDataModule(root=category_root, category="widget", val_split=1.0).setup()


def test_datamodule_require_masks_passthrough(tmp_path):
    root = make_category(tmp_path / "data", masks=False)
    with pytest.raises(DatasetError, match="ground-truth mask"):
        MVTecDataModule(root=root, category="widget", image_size=8).setup()
    dm = MVTecDataModule(root=root, category="widget", image_size=8, require_masks=False)
    dm.setup()
    assert dm.has_masks is False
    batch = next(iter(dm.test_dataloader()))
    assert batch.mask.sum() == 0 and (batch.label == 1).any()


def test_datamodule_missing_category_names_option(category_root):
    with pytest.raises(DatasetError) as err:
        MVTecDataModule(root=category_root, category="gadget").setup()
    assert "gadget" in str(err.value) and "widget" in str(err.value)
    assert "--data.category" in str(err.value)


def test_random_mask_stays_binary_at_odd_sizes(tmp_path):
    rng = np.random.default_rng(0)
    mask = (rng.random((37, 53)) > 0.7).astype(np.uint8) * 255
    path = tmp_path / "odd_mask.png"
    cv2.imwrite(str(path), mask)
    cache = DecodeCache()
    for size in (16, 32, 80):
        out = cache.mask(path, size)
        assert out.shape == (1, size, size) and out.dtype == torch.uint8
        assert set(out.unique().tolist()) <= {0, 1}
        assert abs(float(out.float().mean()) - float((mask > 0).mean())) < 0.1
