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
