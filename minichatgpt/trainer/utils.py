"""Small pieces shared by the trainers: schedules, persistent iterators, device moves, saving."""

import math
from typing import Dict, Iterator

import torch
import torch.nn as nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader


def warmup_cosine_schedule(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0,
                           min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up to the optimizer's lr over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``."""
    total_steps = max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def set_sampler_epoch(dataloader: DataLoader, epoch: int) -> None:
    """Reshuffle a distributed sampler for a new epoch (a no-op for plain samplers)."""
    sampler = getattr(dataloader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def cycle(dataloader: DataLoader) -> Iterator:
    """One persistent iterator over ``dataloader`` that restarts (with a new epoch) when exhausted.

    Used for prompts and the PPO-ptx pretraining data, so each step draws the next batch instead of
    rebuilding an iterator (and re-reading the first batch) every time.
    """
    epoch = 0
    while True:
        set_sampler_epoch(dataloader, epoch)
        empty = True
        for batch in dataloader:
            empty = False
            yield batch
        if empty:
            raise ValueError("cannot cycle over an empty dataloader")
        epoch += 1


def to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Parameter count; under ZeRO-3 the local tensors are empty placeholders, so ``ds_numel`` counts."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters() if p.requires_grad or not trainable_only)


def save_pretrained(strategy, model: nn.Module, directory: str, tokenizer=None) -> None:
    """Write a model as a Hugging Face directory (with tokenizer) from rank 0.

    Sharded parameters (FSDP, ZeRO-3) are gathered into a plain copy of the model first.
    """
    from ..nn import rebuilt_copy

    module = strategy.unwrap_model(model)
    if strategy.shards_parameters:
        state = strategy.full_state_dict(model)  # collective: every rank takes part
        if strategy.is_rank0():
            rebuilt_copy(module, state).save_pretrained(directory, tokenizer=tokenizer)
    elif strategy.is_rank0():
        module.save_pretrained(directory, tokenizer=tokenizer)
    strategy.barrier()


def disable_dropout(module: nn.Module) -> None:
    """Set every dropout probability to 0: PPO's probability ratios must not be noised by dropout."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
