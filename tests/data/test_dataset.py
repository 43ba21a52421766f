"""The cached Dataset: resizing to the bound geometry, decoding once, transforms, collation."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from mvtec_ad.data.dataset import AnomalyDataset, Batch, collate_batch
from mvtec_ad.data.decode import DecodeCache
from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.data.sources.mvtec import scan_category
from tests.helpers import SIZE, write_image, write_mask


def test_dataset_resizes_mixed_sizes_and_scales_to_unit_range(tmp_path):
    root = tmp_path / "data"
    folder = root / "widget"
    write_image(folder / "train" / "good" / "a.png", value=255, size=(20, 40))  # mixed up/down
    write_image(folder / "train" / "good" / "b.png", value=0, size=(64, 48))  # shrink
    write_image(folder / "train" / "good" / "c.png", value=51, size=(16, 16), channels=1)  # enlarge, gray
    write_image(folder / "test" / "crack" / "000.png", value=200, size=(48, 48))
    write_mask(folder / "ground_truth" / "crack" / "000_mask.png", size=(48, 48), value=17)
    layout = scan_category(root, "widget")

    train = AnomalyDataset(layout.train, InputGeometry.of(SIZE))
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

    test = AnomalyDataset(layout.test, InputGeometry.of(SIZE))
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
    ds = AnomalyDataset(layout.test, InputGeometry.of(16), cache=cache)
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
    AnomalyDataset(layout.test[:1], InputGeometry.of(8), cache=cache)[0]
    assert cache.decodes == len(ds) + n_masks + 2


def test_transform_cannot_corrupt_the_cache(category_root):
    layout = scan_category(category_root, "widget")
    cache = DecodeCache()

    def vandal(image, mask):
        image.mul_(0.0)
        mask.add_(5.0)
        return image, mask

    defective = [s for s in layout.test if s.label == 1][:1]
    AnomalyDataset(defective, InputGeometry.of(SIZE), transform=vandal, cache=cache)[0]
    clean = AnomalyDataset(defective, InputGeometry.of(SIZE), cache=cache)[0]
    assert float(clean["image"].max()) > 0.5  # value 200 / 255
    assert set(clean["mask"].unique().tolist()) == {0.0, 1.0}


def test_transform_is_applied(category_root):
    layout = scan_category(category_root, "widget")
    ds = AnomalyDataset(
        layout.train, InputGeometry.of(SIZE), transform=lambda im, m: (im.flip(-1) * 0 + 0.5, m + 1)
    )
    item = ds[0]
    torch.testing.assert_close(item["image"], torch.full((3, SIZE, SIZE), 0.5))
    torch.testing.assert_close(item["mask"], torch.ones(1, SIZE, SIZE))


def test_collate_batch_shapes_and_dtypes(category_root):
    layout = scan_category(category_root, "widget")
    ds = AnomalyDataset(layout.test, InputGeometry.of(SIZE))
    batch = collate_batch([ds[i] for i in range(len(ds))])
    n = len(layout.test)
    assert isinstance(batch, Batch)
    assert len(batch) == n
    assert batch.image.shape == (n, 3, SIZE, SIZE) and batch.image.dtype == torch.float32
    assert batch.mask.shape == (n, 1, SIZE, SIZE) and batch.mask.dtype == torch.float32
    assert batch.label.dtype == torch.long
    assert batch.label.tolist() == [s.label for s in layout.test]
    assert batch.path == [str(s.path) for s in layout.test]


def test_random_mask_stays_binary_at_odd_sizes(tmp_path):
    rng = np.random.default_rng(0)
    mask = (rng.random((37, 53)) > 0.7).astype(np.uint8) * 255
    path = tmp_path / "odd_mask.png"
    cv2.imwrite(str(path), mask)
    cache = DecodeCache()
    for size in (16, 32, 80):
        out = cache.mask(path, InputGeometry.of(size))
        assert out.shape == (1, size, size) and out.dtype == torch.uint8
        assert set(out.unique().tolist()) <= {0, 1}
        assert abs(float(out.float().mean()) - float((mask > 0).mean())) < 0.1
