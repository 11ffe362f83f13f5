"""The windows of an epoch as a DataLoader: drawn by index (a pure function of seed, epoch and index), so
that workers and the ranks of a distributed run each take their own without coordination."""
from __future__ import annotations

import os

from torch.utils.data import DataLoader, Dataset

from .data import WindowSampler


class _Windows(Dataset):
    def __init__(self, sampler: WindowSampler, n: int, epoch: int):
        self.sampler, self.n, self.epoch = sampler, n, epoch

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.sampler.draw(self.epoch, i)


class _StepBatches:
    """Window indices of each step, endlessly: an epoch is as many steps as the schedule says, and each
    rank of a distributed run takes its own indices."""

    def __init__(self, batch: int, world: int, rank: int):
        self.batch, self.world, self.rank = batch, world, rank

    def __iter__(self):
        step = 0
        while True:
            first = (step * self.world + self.rank) * self.batch
            yield list(range(first, first + self.batch))
            step += 1


def _as_drawn(batch):
    return batch  # windows differ in size: augment_batch crops and resizes them on the device


def epoch_loader(sampler: WindowSampler, epoch: int, batch: int, world: int, rank: int, workers: int) -> DataLoader:
    """Batches of (image, mask, size, flip) windows of one epoch for this rank, without end."""
    return DataLoader(_Windows(sampler, 1 << 40, epoch), batch_sampler=_StepBatches(batch, world, rank),
                      num_workers=workers, collate_fn=_as_drawn)


def world_and_rank() -> tuple[int, int]:
    """(processes in the run, this one's rank), as torchrun sets them; (1, 0) alone."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
