"""PatchCore's pure model: the coreset bank, the output contract, checkpoints, re-weighting, float16."""

import numpy as np
import pytest
import torch

from mvtec_ad.errors import ConfigError
from mvtec_ad.models.patchcore import PatchCoreModel
from tests.helpers import tiny_dfr_kwargs

torch.manual_seed(0)
IMAGES = torch.rand(6, 3, 64, 64)


@pytest.fixture(scope="module")
def patchcore() -> PatchCoreModel:
    model = PatchCoreModel(**tiny_dfr_kwargs(), coreset_ratio=0.25, image_size=64).eval()
    with torch.no_grad():
        model.fit(model.embed(IMAGES[:4]))
    return model


def test_patchcore_bank_is_the_coreset_share_of_all_patches(patchcore):
    patches = patchcore.embed(IMAGES[:4])
    total = patches.shape[0] * patches.shape[2] * patches.shape[3]
    assert patchcore.memory_bank.shape == (int(np.ceil(0.25 * total)), patches.shape[1])
    flat = patches.permute(0, 2, 3, 1).reshape(-1, patches.shape[1])
    # every bank row is one of the training patches
    exact = torch.cdist(patchcore.memory_bank, flat, compute_mode="donot_use_mm_for_euclid_dist")
    assert exact.amin(1).max() < 1e-4


def test_patchcore_output_contract_and_training_images_score_low(patchcore):
    with torch.no_grad():
        out = patchcore(IMAGES)
    assert out.score.shape == (6,) and out.map.shape == (6, 1, 64, 64)
    # the first picks of a 25% coreset cover the training images far better than unseen ones
    assert out.score[:4].max() < out.score[4:].min()
    with torch.no_grad():
        full = PatchCoreModel(**tiny_dfr_kwargs(), coreset_ratio=1.0, image_size=64).eval()
        full.fit(full.embed(IMAGES[:4]))
        assert full(IMAGES[:4]).score.abs().max() < 1e-2  # a full bank contains every training patch


def test_patchcore_checkpoint_resizes_the_bank_of_a_fresh_model(patchcore):
    fresh = PatchCoreModel(**tiny_dfr_kwargs(), image_size=64).eval()
    assert fresh.memory_bank.shape[0] == 0
    fresh.load_state_dict(patchcore.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(IMAGES).score, patchcore(IMAGES).score)
    with pytest.raises(RuntimeError, match="fit the detector first or load a checkpoint"):
        PatchCoreModel(**tiny_dfr_kwargs(), image_size=64)(IMAGES[:1])


def test_patchcore_reweighting_only_lowers_the_max_score(patchcore):
    reweighted = PatchCoreModel(**tiny_dfr_kwargs(), reweight=True, num_neighbors=3, image_size=64).eval()
    reweighted.load_state_dict(patchcore.state_dict())
    with torch.no_grad():
        plain, weighted = patchcore(IMAGES).score, reweighted(IMAGES).score
    assert (weighted <= plain + 1e-6).all() and (weighted > 0).all()
    assert not torch.allclose(weighted, plain)


def test_patchcore_float16_bank_gives_nearly_the_same_scores(patchcore):
    half = PatchCoreModel(**tiny_dfr_kwargs(), bank_dtype="float16", image_size=64).eval()
    half.load_state_dict(patchcore.state_dict())
    assert half.memory_bank.dtype == torch.float32  # the checkpoint's dtype wins when loading
    half.memory_bank = patchcore.memory_bank.half()
    with torch.no_grad():
        assert torch.allclose(half(IMAGES).score, patchcore(IMAGES).score, rtol=1e-2)


def test_patchcore_window_max_score_is_the_best_block_mean_of_the_patch_map(patchcore):
    windowed = PatchCoreModel(**tiny_dfr_kwargs(), score="window_max", score_window=3, image_size=64).eval()
    windowed.load_state_dict(patchcore.state_dict())
    with torch.no_grad():
        patches = patchcore.embed(IMAGES)
        b, c, h, w = patches.shape
        distances, _ = patchcore.search(
            patches.permute(0, 2, 3, 1).reshape(b, h * w, c), patchcore.memory_bank
        )
        raw = distances.view(b, 1, h, w)
        plain, out = patchcore(IMAGES), windowed(IMAGES)
    # by hand: mean of each 3x3 block of map cells (border blocks: the cells inside the map)
    padded = torch.nn.functional.pad(raw, (1, 1, 1, 1), value=float("nan"))
    blocks = padded.unfold(2, 3, 1).unfold(3, 3, 1)  # [B, 1, h, w, 3, 3]
    expected = blocks.nanmean(dim=(-2, -1)).flatten(1).amax(1)
    assert torch.allclose(out.score, expected, rtol=1e-5)
    assert (out.score <= plain.score + 1e-6).all() and not torch.allclose(out.score, plain.score)
    assert torch.equal(out.map, plain.map)  # the rule changes the score only


def test_patchcore_rejects_unknown_score_rules_and_reweighting_a_window_score():
    with pytest.raises(ConfigError, match="--model.score must be max or window_max"):
        PatchCoreModel(**tiny_dfr_kwargs(), score="topk", image_size=64)
    with pytest.raises(ConfigError, match="--model.reweight re-weights the max patch score"):
        PatchCoreModel(**tiny_dfr_kwargs(), score="window_max", reweight=True, image_size=64)


def two_bank(coarse_layers=("blocks.4", "blocks.6"), pool: int = 5, **kwargs) -> PatchCoreModel:
    model = PatchCoreModel(
        **tiny_dfr_kwargs(), coreset_ratio=0.25, image_size=64, coarse_layers=coarse_layers,
        coarse_pool_kernel=pool, **kwargs,
    ).eval()  # fmt: skip
    with torch.no_grad():
        model.fit(*model.embed_banks(IMAGES[:4]))
    return model


def test_patchcore_two_identical_banks_give_the_single_bank_map(patchcore):
    twin = two_bank(coarse_layers=tiny_dfr_kwargs()["layers"], pool=3)
    assert torch.equal(twin.coarse_bank, twin.memory_bank) and torch.equal(
        twin.memory_bank, patchcore.memory_bank
    )
    with torch.no_grad():
        twin.calibrate(twin.normal_distances(IMAGES[4:], None))  # identical banks: identical statistics
        single, both = patchcore(IMAGES), twin(IMAGES)
    assert torch.equal(twin.bank_stats[0], twin.bank_stats[1])
    assert torch.allclose(both.map, single.map, rtol=1e-5, atol=1e-6)
    assert torch.allclose(both.score, single.score, rtol=1e-5)


def test_patchcore_coarse_bank_is_scaled_onto_the_fine_bank_and_averaged_into_the_score(patchcore):
    model = two_bank()
    assert model.coarse_bank.shape[1] == sum(model.extractor.channels[1:])  # blocks.4 + blocks.6, one pass
    with torch.no_grad():
        model.calibrate([torch.tensor([1.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])])
    assert torch.allclose(model.bank_stats, torch.tensor([[2.0, 2**0.5], [20.0, 10.0]]))
    with torch.no_grad():
        fine, coarse = model.embed_banks(IMAGES)
        maps = []
        for features, bank in ((fine, model.memory_bank), (coarse, model.coarse_bank)):
            b, c, h, w = features.shape  # by hand: the exact nearest bank row of every patch
            rows = features.permute(0, 2, 3, 1).reshape(-1, c)
            near = torch.cdist(rows, bank, compute_mode="donot_use_mm_for_euclid_dist").amin(1)
            maps.append(near.view(b, 1, h, w))
        coarse_map = torch.nn.functional.interpolate(maps[1], size=maps[0].shape[-2:], mode="bilinear")
        expected = (maps[0] + 2.0 + (coarse_map - 20.0) * (2**0.5 / 10.0)) / 2
        out = model(IMAGES)
    assert coarse.shape[-1] * 2 == fine.shape[-1]  # the coarse grid is resized to the fine one
    assert torch.allclose(out.score, expected.flatten(1).amax(1), rtol=1e-4)
    single = patchcore(IMAGES)
    assert not torch.allclose(out.score, single.score)
    assert torch.allclose(out.map, single.map, rtol=1e-5, atol=1e-6)  # the map is the fine bank's


def test_patchcore_checkpoint_carries_both_banks_and_their_statistics():
    model = two_bank()
    with torch.no_grad():
        model.calibrate(model.normal_distances(IMAGES[4:], None))
        fresh = PatchCoreModel(
            **tiny_dfr_kwargs(), image_size=64, coarse_layers=["blocks.4", "blocks.6"]
        ).eval()
        fresh.load_state_dict(model.state_dict())
        assert (
            torch.equal(fresh.bank_stats, model.bank_stats)
            and fresh.coarse_bank.shape == model.coarse_bank.shape
        )
        assert torch.equal(fresh(IMAGES).map, model(IMAGES).map)
    with pytest.raises(ConfigError, match="leave --model.coarse_layers empty"):
        PatchCoreModel(**tiny_dfr_kwargs(), image_size=64, coarse_layers=["blocks.6"], reweight=True)
