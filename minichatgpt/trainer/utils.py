"""Small pieces shared by the trainers: persistent iterators, device moves, saving."""

import itertools
import re
from typing import Dict, Iterator, Optional, Union

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from transformers import PretrainedConfig


def set_sampler_epoch(dataloader: DataLoader, epoch: int) -> None:
    """Reshuffle a distributed sampler for a new epoch (a no-op for plain samplers)."""
    sampler = getattr(dataloader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


class _SkipSampler(torch.utils.data.Sampler):
    """A sampler without its first ``skip`` indices (``set_epoch`` passes through)."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


def skip_batches(dataloader: DataLoader, num_batches: int) -> DataLoader:
    """The same loader started at batch ``num_batches`` of the current epoch, skipping at the sampler, so
    the skipped batches are never loaded or collated. Call after ``set_sampler_epoch``."""
    if num_batches == 0:
        return dataloader
    if dataloader.batch_size is None:
        raise ValueError("skip_batches needs a loader built with batch_size (not a custom batch_sampler)")
    return DataLoader(dataloader.dataset, batch_size=dataloader.batch_size,
                      sampler=_SkipSampler(dataloader.sampler, num_batches * dataloader.batch_size),
                      collate_fn=dataloader.collate_fn, drop_last=dataloader.drop_last,
                      num_workers=dataloader.num_workers, pin_memory=dataloader.pin_memory)


def fresh_iterator(dataloader: DataLoader) -> Iterator:
    """``iter(dataloader)`` without its draw from the global torch RNG (the loader's worker seed).

    A resumed run creates its iterator at another point of the RNG stream than the interrupted run
    did; without this, every later random number (dropout, sampling) would differ.
    """
    with torch.random.fork_rng(devices=[]):
        return iter(dataloader)


class cycle:  # noqa: N801 (used like the generator function it replaces)
    """One persistent iterator over ``dataloader`` that restarts (with a new epoch) when exhausted.

    Used for prompts and the PPO-ptx pretraining data, so each step draws the next batch instead of
    rebuilding an iterator (and re-reading the first batch) every time. ``state_dict`` (epoch and
    batches drawn in it) and ``load_state_dict`` let a resumed run continue at the same batch.
    """

    def __init__(self, dataloader: DataLoader):
        self.dataloader, self.epoch, self.position = dataloader, 0, 0
        self._iterator: Optional[Iterator] = None

    def __iter__(self) -> "cycle":
        return self

    def _start(self) -> None:
        set_sampler_epoch(self.dataloader, self.epoch)
        self._iterator = fresh_iterator(skip_batches(self.dataloader, self.position))

    def __next__(self):
        if self._iterator is None:
            self._start()
        try:
            batch = next(self._iterator)
        except StopIteration:
            if self.position == 0:
                raise ValueError("cannot cycle over an empty dataloader") from None
            self.epoch, self.position = self.epoch + 1, 0
            self._start()
            batch = next(self._iterator)
        self.position += 1
        return batch

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch, self.position, self._iterator = state["epoch"], state["position"], None


def to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Parameter count; under ZeRO-3 the local tensors are empty placeholders, so ``ds_numel`` counts."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters() if p.requires_grad or not trainable_only)


def save_pretrained(strategy, model: nn.Module, directory: str, tokenizer=None,
                    dtype: Union[str, torch.dtype, None] = None) -> None:
    """Write a model as a Hugging Face directory (with tokenizer) from rank 0.

    Args:
        dtype: dtype of the written weights (``"bf16"``, ``torch.float16``...); None: the dtype the model's
            checkpoint was stored in (``source_dtype``, float32 for models built from a config).

    Sharded parameters (FSDP, ZeRO-3) and low-precision working copies (DeepSpeed bf16/fp16) are replaced by
    the gathered float32 state first; weights are then cast to ``dtype`` one tensor at a time as they are
    written, never in the live model.
    """
    from ..nn import rebuilt_copy
    from .strategies.precision import as_dtype

    module = strategy.unwrap_model(model)
    dtype = as_dtype(dtype) or source_dtype(module)
    working_copy = any(p.is_floating_point() and p.dtype != torch.float32 for p in module.parameters())
    if strategy.shards_parameters or working_copy or dtype != torch.float32:
        state = strategy.full_state_dict(model)  # collective: every rank takes part
        if strategy.is_rank0():
            # Adapters and biases (small) are cast now, as saved adapters hold them; the large weights are
            # cast one at a time as they are written, so no full copy in ``dtype`` is built.
            state = {k: v.to(dtype) if v.is_floating_point() and ("lora_" in k or "bias" in k) else v
                     for k, v in state.items()}
            rebuilt_copy(module, state).save_pretrained(directory, tokenizer=tokenizer, dtype=dtype)
    elif strategy.is_rank0():
        module.save_pretrained(directory, tokenizer=tokenizer)
    strategy.barrier()


def source_dtype(module: nn.Module) -> torch.dtype:
    """The dtype the weights of an ``Actor``/``Critic``/``RewardModel`` were stored in before loading."""
    for m in module.modules():
        if isinstance(getattr(m, "source_dtype", None), torch.dtype):
            return m.source_dtype
    return torch.float32


# Names of dropout probabilities in Hugging Face configs and in the modules that copy them at init:
# ``dropout``, ``attention_dropout``, ``hidden_dropout`` (OPT, BLOOM, LLaMA, GPT-NeoX), GPT-2's
# ``resid_pdrop``/``embd_pdrop``/``attn_pdrop``, OPT's ``layerdrop`` (skips whole layers).
_DROPOUT_NAME = re.compile(r"dropout|pdrop|layerdrop")


def _zero_dropout_floats(obj) -> None:
    for name, value in list(vars(obj).items()):
        if isinstance(value, float) and value > 0 and _DROPOUT_NAME.search(name):
            setattr(obj, name, 0.0)


def disable_dropout(module: nn.Module) -> None:
    """Set every dropout probability to 0: PPO's probability ratios must not be noised by dropout.

    ``nn.Dropout`` modules get ``p = 0``; float attributes named like dropout probabilities are zeroed
    on every submodule (attention modules copy ``config.attention_dropout`` at init and pass it to
    functional dropout in training mode) and on every config. ``eval()`` would switch dropout off
    too, but it also turns gradient checkpointing off, so it is not relied on.
    """
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        _zero_dropout_floats(m)
        config = getattr(m, "config", None)  # engines (DeepSpeed) keep other kinds of ``config`` too
        if isinstance(config, PretrainedConfig):
            _zero_dropout_floats(config)
