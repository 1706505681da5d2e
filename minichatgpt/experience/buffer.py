"""Replay buffer of experience items, re-collated into padded batches for the PPO epochs."""

import random
from typing import Iterator, List, Optional

import torch

from .experience import Experience, collate_experiences


class ReplayBuffer:
    """Holds rollouts between PPO updates.

    Args:
        sample_batch_size: rows per training batch (``train_batch_size``).
        limit: keep at most this many items (oldest dropped first); 0 means unbounded.
        cpu_offload: keep items on the CPU and move each batch to ``device`` when it is drawn.
        pad_token_id: pad used when re-collating sequences.
    """

    def __init__(self, sample_batch_size: int, limit: int = 0, cpu_offload: bool = True, pad_token_id: int = 0,
                 device: Optional[torch.device] = None):
        self.sample_batch_size = sample_batch_size
        self.limit = limit
        self.cpu_offload = cpu_offload
        self.pad_token_id = pad_token_id
        self.device = device
        self.items: List[Experience] = []

    def __len__(self) -> int:
        return len(self.items)

    def append(self, experience: Experience) -> None:
        if self.cpu_offload:
            experience = experience.to("cpu")
        self.items.extend(experience.split())
        if self.limit > 0 and len(self.items) > self.limit:
            self.items = self.items[-self.limit:]

    def clear(self) -> None:
        self.items.clear()

    def _collate(self, items: List[Experience]) -> Experience:
        batch = collate_experiences(items, self.pad_token_id)
        return batch.to(self.device) if self.device is not None else batch

    def sample(self, rng: Optional[random.Random] = None) -> Experience:
        """One batch of ``sample_batch_size`` items drawn uniformly with replacement."""
        rng = rng or random
        return self._collate([rng.choice(self.items) for _ in range(self.sample_batch_size)])

    def batches(self, shuffle: bool = True, rng: Optional[random.Random] = None) -> Iterator[Experience]:
        """One pass over every item in batches of ``sample_batch_size`` (the last may be smaller)."""
        order = list(range(len(self.items)))
        if shuffle:
            (rng or random).shuffle(order)
        for start in range(0, len(order), self.sample_batch_size):
            yield self._collate([self.items[i] for i in order[start:start + self.sample_batch_size]])
