"""Randomness that depends only on (seed, epoch, image): resumed fits see exactly what uninterrupted ones saw.

An interrupted fit resumed from last.ckpt must end with the same weights and metrics as one that
ran straight through. Global RNG streams cannot promise that: dataloader iterators, sanity checks
and statistics passes draw from them in different numbers in the two runs. So the training data
order comes from EpochSampler, seeded by (seed, epoch), and each training image's augmentation
from its own generator seeded by (seed, epoch, index); EpochSampler yields (epoch, index) pairs
so that DataLoader workers, persistent or not, know the epoch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sized

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, the same on every machine and process (a hash, not a sum)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochSampler(DistributedSampler):
    """Training order of one epoch from (seed, epoch) alone; yields (epoch, index) pairs.

    `num_samples` draws that many indices per epoch (with replacement when it exceeds the
    dataset, like RandomSampler); None = every image once. A DistributedSampler, so Lightning
    calls its set_epoch and, under DDP, lets it deal the same order out to every process.
    """

    def __init__(self, dataset: Sized, seed: int, num_samples: int | None = None) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(
            dataset,
            num_replicas=dist.get_world_size() if distributed else 1,
            rank=dist.get_rank() if distributed else 0,
            shuffle=True,
            seed=seed,
        )
        self.per_epoch = len(dataset) if num_samples is None else num_samples
        self.num_samples = math.ceil(self.per_epoch / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def order(self) -> list[int]:
        """This epoch's indices over all processes (before padding and dealing)."""
        n = len(self.dataset)
        generator = torch.Generator().manual_seed(derived_seed(self.seed, "order", self.epoch))
        if self.per_epoch > n:
            return torch.randint(n, (self.per_epoch,), generator=generator).tolist()
        return torch.randperm(n, generator=generator)[: self.per_epoch].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self.order()
        indices += indices[: self.total_size - len(indices)]  # pad so that every process gets as many
        return iter((self.epoch, i) for i in indices[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples
