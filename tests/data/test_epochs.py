"""Per-epoch randomness: the training order and each image's augmentation depend on (seed, epoch, index) only."""

import torch

from mvtec_ad.data.dataset import AnomalyDataset
from mvtec_ad.data.epochs import EpochSampler, derived_seed
from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.data.sources.mvtec import scan_category
from mvtec_ad.data.transforms import build_augmentation


def test_the_order_of_an_epoch_depends_on_seed_and_epoch_only():
    def order(seed, epoch, n=10, per_epoch=None):
        sampler = EpochSampler(range(n), seed, per_epoch)
        sampler.set_epoch(epoch)
        torch.rand(5)  # the global generator is irrelevant
        return list(sampler)

    assert order(1, 3) == order(1, 3)
    assert order(1, 3) != order(1, 4) and order(1, 3) != order(2, 3)
    assert all(epoch == 3 for epoch, _ in order(1, 3))
    assert sorted(i for _, i in order(1, 3)) == list(range(10))  # every image once
    assert len(order(1, 0, per_epoch=25)) == 25  # more than the set: drawn with replacement
    assert len({i for _, i in order(1, 0, per_epoch=6)}) == 6  # fewer: without


def test_processes_share_one_order_between_them():
    samplers = [EpochSampler(range(7), 0) for _ in range(2)]
    for rank, sampler in enumerate(samplers):
        sampler.num_replicas, sampler.rank = 2, rank
        sampler.num_samples, sampler.total_size = 4, 8
    dealt = [i for sampler in samplers for _, i in sampler]
    assert len(dealt) == 8 and set(dealt) == set(range(7))  # one padded repeat, nothing lost


def test_an_images_augmentation_depends_on_seed_epoch_and_index_not_on_the_global_generator(category_root):
    samples = scan_category(category_root, "widget").train
    dataset = AnomalyDataset(samples, InputGeometry.of(32), transform=build_augmentation("favae"), seed=5)
    torch.manual_seed(0)
    first = dataset[(2, 1)]["image"]
    torch.manual_seed(1)
    assert torch.equal(dataset[(2, 1)]["image"], first)
    assert not torch.equal(dataset[(3, 1)]["image"], first)  # another epoch, another draw
    before = torch.get_rng_state()
    dataset[(4, 0)]
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is left alone
    assert derived_seed(5, "augment", 2, 1) != derived_seed(5, "augment", 1, 2)
