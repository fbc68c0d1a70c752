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


class JointBatchSampler:
    """Joint image+video training: at each step a draw from (seed, step) picks an image batch
    with probability `image_share`, else a video batch; image (T = 1) and video buckets are served
    by their own `BucketBatchSampler`s, whose positions are saved, so resume stays exact."""

    def __init__(self, bucket_of: Sequence[tuple[int, int, int]], global_batch: int,
                 image_share: float, rank: int = 0, world_size: int = 1, seed: int = 0,
                 min_bucket_batches: float = 1.0) -> None:
        if not 0 < image_share < 1:
            raise ValueError(f"image_share must be in (0, 1), got {image_share}")
        self.image_share, self.seed = image_share, seed
        self.index: dict[str, np.ndarray] = {
            "images": np.array([i for i, b in enumerate(bucket_of) if b[0] == 1]),
            "videos": np.array([i for i, b in enumerate(bucket_of) if b[0] > 1])}
        self.samplers = {kind: BucketBatchSampler([bucket_of[i] for i in index], global_batch, rank,
                                                  world_size, seed, min_bucket_batches)
                         for kind, index in self.index.items()}
        self.step = 0

    def kind_at(self, step: int) -> str:
        draw = np.random.default_rng([self.seed, step, 1]).random()
        return "images" if draw < self.image_share else "videos"

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            kind = self.kind_at(self.step)
            sampler = self.samplers[kind]
            batch = self.index[kind][sampler.batch_at(sampler.step)].tolist()
            sampler.step += 1
            self.step += 1
            yield batch

    def state_dict(self) -> dict[str, object]:
        return {"step": self.step, **{k: s.state_dict() for k, s in self.samplers.items()}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.step = state["step"]
        for kind, sampler in self.samplers.items():
            sampler.load_state_dict(state[kind])
