"""Batches of one shape per step, shuffled across buckets, resumable at any step.

Each epoch, every bucket's samples are shuffled and cut into global batches (a partial last
batch is dropped); buckets with fewer than `min_bucket_batches` global batches are dropped; the
global batches of all buckets are shuffled together. Rank r takes its slice of every global
batch, so all ranks see the same shape at a step. The batch at a step is a pure function of
(seed, step), so resuming at the step after the last consumed batch reproduces the run.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import numpy as np


class BucketBatchSampler:
    def __init__(self, bucket_of: Sequence[Hashable], global_batch: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, min_bucket_batches: float = 1.0) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} ranks")
        self.global_batch = global_batch
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        members: dict[Hashable, list[int]] = {}
        for index, bucket in enumerate(bucket_of):
            members.setdefault(bucket, []).append(index)
        min_size = max(min_bucket_batches, 1) * global_batch
        self.dropped = {b: len(m) for b, m in members.items() if len(m) < min_size}
        self.buckets = {b: np.array(m) for b, m in members.items() if b not in self.dropped}
        self.batches_per_epoch = sum(len(m) // global_batch for m in self.buckets.values())
        if self.batches_per_epoch == 0:
            raise ValueError(f"no bucket holds a global batch of {global_batch} samples "
                             f"(bucket sizes: {self.dropped})")
        self.step = 0  # batches consumed so far; the next batch served is `batch_at(step)`
        self._epoch_cache: tuple[int, list[np.ndarray]] | None = None

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            batches = []
            for bucket in sorted(self.buckets, key=repr):  # stable order before shuffling
                order = rng.permutation(self.buckets[bucket])
                usable = len(order) // self.global_batch * self.global_batch
                batches.extend(order[:usable].reshape(-1, self.global_batch))
            self._epoch_cache = (epoch, [batches[i] for i in rng.permutation(len(batches))])
        return self._epoch_cache[1]

    def global_batch_at(self, step: int) -> list[int]:
        epoch, position = divmod(step, self.batches_per_epoch)
        return self._epoch_batches(epoch)[position].tolist()

    def batch_at(self, step: int) -> list[int]:
        """This rank's sample indices at `step`."""
        per_rank = self.global_batch // self.world_size
        return self.global_batch_at(step)[self.rank * per_rank : (self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        """Endless: serves the batch at `self.step` and counts it as consumed."""
        while True:
            batch = self.batch_at(self.step)
            self.step += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "seed": self.seed, "batches_per_epoch": self.batches_per_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed or state["batches_per_epoch"] != self.batches_per_epoch:
            raise ValueError(f"sampler state {state} does not belong to this dataset/seed")
        self.step = state["step"]
