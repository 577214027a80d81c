"""Seeded, keyed data loading: results do not depend on num_workers, persistent workers or ranks.

Every random draw is keyed: the shuffle order on (seed, epoch), each augmentation on
(seed, epoch, sample index). The batch sampler runs in the main process and hands `(epoch, index)`
keys to the dataset, so workers need no state of their own (persistent workers included), and a
resumed run can skip the batches it already did.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pathtrail.config.subsections import StainAugmentParams
from pathtrail.core.system import usable_cpus
from pathtrail.data.stain_augment import random_hed_jitter
from pathtrail.data.store import PatchStore

SHUFFLE_KEY = 0x5EED
MEAN, STD = 0.5, 0.25


def default_num_workers() -> int:
    """Platform-aware default: leave a core for the main process; none where fork is unavailable."""
    return max(0, min(8, usable_cpus() - 1))


class KeyedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (epoch, index) keys; rank `rank` of `world` takes every world-th sample.

    Like DistributedSampler, the order is padded with repeats to a multiple of `world`; callers
    drop the repeats (the `index` travels with each sample) before computing metrics.
    """

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world = rank, world
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def order(self) -> np.ndarray:
        idx = (
            np.random.default_rng([self.seed, self.epoch, SHUFFLE_KEY]).permutation(self.n)
            if self.shuffle
            else np.arange(self.n)
        )
        total = math.ceil(self.n / self.world) * self.world
        if total > self.n:
            idx = np.concatenate([idx, idx[: total - self.n]])
        return idx[self.rank :: self.world]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        idx = self.order()
        for b in range(self.skip, len(self)):
            chunk = idx[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(self.epoch, int(i)) for i in chunk]

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.n / self.world) / self.batch_size)


def augment(img: np.ndarray, seed: int, epoch: int, index: int) -> np.ndarray:
    """Dihedral augmentation (8 flips/rotations) drawn from a generator keyed on the sample."""
    k = int(np.random.default_rng([seed, epoch, index]).integers(8))
    out = np.rot90(img, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


def to_tensor(img: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
    return x.sub_(MEAN).div_(STD)


class PatchDataset(Dataset):
    """Patches of `rows` (store rows) with `labels` (class indices (N,), or 0/1 (N, L) multi-label);
    item key is (epoch, position).

    `augment`: the dihedral flips and rotations; `stain_augment` (when enabled): HED colour jitter
    (`pathtrail.data.stain_augment`). Each is drawn from its own generator keyed on the sample.
    """

    def __init__(self, store: PatchStore, rows: np.ndarray, labels: np.ndarray, augment: bool, seed: int,
                 stain_augment: StainAugmentParams | None = None) -> None:
        self.store, self.rows, self.labels = store, rows, labels
        self.augment, self.seed = augment, seed
        self.stain_augment = stain_augment if stain_augment is not None and stain_augment.enabled else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int | torch.Tensor, int]:
        epoch, i = key
        img = self.store.patch(int(self.rows[i]))
        if self.augment:
            img = augment(img, self.seed, epoch, i)
        if self.stain_augment is not None:
            s = self.stain_augment
            img = random_hed_jitter(img, s.sigma_scale, s.sigma_shift, self.seed, epoch, i)
        y = self.labels[i]  # a class index, or a multi-label row of 0/1 (float32)
        return to_tensor(img), (int(y) if np.ndim(y) == 0 else torch.from_numpy(np.array(y, np.float32))), i


def _seed_worker(worker_id: int) -> None:
    # Only for third-party code that draws from global RNGs; our own draws are keyed.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_loader(
    dataset: PatchDataset,
    sampler: KeyedBatchSampler,
    *,
    num_workers: int,
    prefetch_factor: int,
    persistent_workers: bool,
    pin_memory: bool,
    seed: int,
) -> DataLoader:
    """A DataLoader with its own generator (never the global RNG) and keyed batches."""
    workers = num_workers if num_workers >= 0 else default_num_workers()
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=persistent_workers and workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        worker_init_fn=_seed_worker if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
