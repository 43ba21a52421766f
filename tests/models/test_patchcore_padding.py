"""PatchCore leaves keep_aspect padding out of its banks and out of the search: test never scores it."""

from pathlib import Path

import torch

from mvtec_ad.models.patchcore import PatchCore, search_cells
from mvtec_ad.search.bank import BankSearch
from tests.helpers import datamodule, main_in_process, tiny_args

# a 48 x 80 canvas: the tiny set's square images cover its left 48 x 48, the rest is padding
CANVAS = ("--model.image_size", "[48, 80]", "--model.resize", "keep_aspect", "--model.pad", "reflect")


def fit(root: Path, out: Path, *extra: str) -> PatchCore:
    args = tiny_args("configs/demo/patchcore.yaml", root, out, "--trainer.logger", "false", *CANVAS, *extra)
    main_in_process(["fit", *args])
    (checkpoint,) = (out / "checkpoints").glob("model.ckpt")
    return PatchCore.load_from_checkpoint(checkpoint, map_location="cpu").eval()


def test_padding_patches_stay_out_of_both_banks(tiny_root, tmp_path):
    module = fit(tiny_root, tmp_path / "run", "--model.coreset_ratio", "1.0")  # every image patch kept
    dm = datamodule(tiny_root, "washer", 64, val_split=0.2)
    train_images = len(dm.train_set)
    # by hand: stride 8 -> a 6 x 10 grid of which the image covers 6 x 6; stride 16 -> 3 x 5, image 3 x 3
    assert module.model.memory_bank.shape[0] == train_images * 6 * 6
    assert module.model.coarse_bank.shape[0] == train_images * 3 * 3
    assert not module.model.memory_bank.isnan().any() and not module.model.coarse_bank.isnan().any()


def test_embed_marks_padding_cells_as_nan():
    module = PatchCore(
        backbone="efficientnet_lite0", layers=["blocks.2", "blocks.4"], weights="none", image_size=[48, 80]
    )
    valid = torch.zeros(2, 1, 48, 80, dtype=torch.bool)
    valid[0, :, :, :48] = True  # image 0: 48 x 48 of the canvas
    valid[1] = True  # image 1: all of it
    (fine,) = module.embed(torch.rand(2, 3, 48, 80), valid)
    assert fine.shape[-2:] == (6, 10)
    assert fine[0, :, :, 6:].isnan().all() and not fine[0, :, :, :6].isnan().any()
    assert not fine[1].isnan().any()


def test_search_cells_searches_image_cells_only_and_equals_the_full_search_there():
    generator = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(3, 20, 8, generator=generator), torch.randn(50, 8, generator=generator)
    cells = torch.rand(3, 1, 4, 5, generator=generator) > 0.4
    search = BankSearch("exact_fp32")
    seen: list[int] = []

    class Counting(BankSearch):
        def __call__(self, q, b, k=1):
            seen.append(q.shape[-2] * q.shape[0])
            return super().__call__(q, b, k)

    counting = Counting("exact_fp32")
    distances, nearest = search_cells(counting, queries, bank, cells)
    full_distances, full_nearest = search(queries, bank)
    image = cells.view(3, 20)
    assert seen == [int(image.sum())]  # padding rows never reached the search
    torch.testing.assert_close(distances[image], full_distances[image])
    assert torch.equal(nearest[image], full_nearest[image])
    assert (distances[~image] == 0).all() and (nearest[~image] == 0).all()
    everything, _ = search_cells(search, queries, bank, None)
    torch.testing.assert_close(everything, full_distances)
