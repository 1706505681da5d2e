"""Precision building blocks: dtype names, ``torch.autocast`` around a model's methods, fp16 loss scaling.

``strategies.mixed`` combines them for naive/DDP (bf16 weights with float32 masters; fp16 autocast with a
``GradScaler``); FSDP uses the loss scaling. Callers cast logits and values to float32 before log-probs, KL,
GAE and losses (``minichatgpt.functional`` does).
"""

import types
from typing import Dict, Optional, Union

import torch
import torch.nn as nn
from torch.optim import Optimizer

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Methods of the library's models that run forwards; each is wrapped in autocast by ``autocast_module``.
AUTOCAST_METHODS = ("forward", "generate")


def as_dtype(precision: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    """``"bf16"`` -> ``torch.bfloat16``; a dtype or None passes through; an unknown name is a ValueError."""
    if precision is None or isinstance(precision, torch.dtype):
        return precision
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return DTYPES[precision]


def precision_name(dtype: Union[str, torch.dtype]) -> str:
    """``torch.bfloat16`` -> ``"bf16"`` (names pass through after a check)."""
    dtype = as_dtype(dtype)
    return next(name for name, d in DTYPES.items() if d == dtype)


class _AutocastMethod:
    """A model method run under ``torch.autocast``; bound per instance, so ``copy.deepcopy`` rebinds it."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, module: nn.Module, *args, **kwargs):
        with torch.autocast(module.autocast_device_type, dtype=module.autocast_dtype):
            return getattr(type(module), self.name)(module, *args, **kwargs)


def autocast_module(module: nn.Module, dtype: torch.dtype, device_type: str) -> nn.Module:
    """Make ``module``'s ``forward`` (and ``generate``, if any) run under autocast in ``dtype``, in place.

    A no-op for float32. Parameters are left as they are (float32 masters); outputs are in whatever
    dtype autocast gives (logits in ``dtype``), so consumers cast to float32 before their math.
    """
    if dtype == torch.float32:
        return module
    module.autocast_dtype, module.autocast_device_type = dtype, device_type
    for name in AUTOCAST_METHODS:
        if callable(getattr(type(module), name, None)):
            setattr(module, name, types.MethodType(_AutocastMethod(name), module))
    return module


class LossScaling:
    """fp16's dynamic loss scaling, one ``GradScaler`` per optimizer; a pass-through for fp32 and bf16.

    Args:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``; only fp16 scales.
        device_type: ``"cuda"`` or ``"cpu"``.
        sharded: gradients are FSDP shards: found infs are agreed over ranks (``ShardedGradScaler``).
    """

    def __init__(self, precision: str, device_type: str, sharded: bool = False):
        self.enabled = as_dtype(precision) == torch.float16
        self.device_type, self.sharded = device_type, sharded
        self._scalers: Dict[int, torch.amp.GradScaler] = {}

    def scaler(self, optimizer: Optimizer) -> Optional[torch.amp.GradScaler]:
        if not self.enabled:
            return None
        if id(optimizer) not in self._scalers:
            if self.sharded:
                from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

                self._scalers[id(optimizer)] = ShardedGradScaler(self.device_type)
            else:
                self._scalers[id(optimizer)] = torch.amp.GradScaler(self.device_type)
        return self._scalers[id(optimizer)]

    def backward(self, loss: torch.Tensor, optimizer: Optimizer) -> None:
        scaler = self.scaler(optimizer)
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def unscale(self, optimizer: Optimizer) -> None:
        """Divide the gradients by the scale (before clipping measures them); once per step."""
        scaler = self.scaler(optimizer)
        if scaler is not None:
            scaler.unscale_(optimizer)

    def step(self, optimizer: Optimizer) -> None:
        """Step (skipped by the scaler when a gradient overflowed), adapt the scale, zero the gradients."""
        scaler = self.scaler(optimizer)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def skip(self, optimizer: Optimizer) -> None:
        """Drop the gradients of a step the trainer skipped; an overflow still lowers the scale."""
        scaler = self.scaler(optimizer)
        if scaler is not None and scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"]:
            scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def state_dict(self, optimizer: Optimizer) -> Optional[dict]:
        scaler = self.scaler(optimizer)
        return scaler.state_dict() if scaler is not None else None

    def load_state_dict(self, optimizer: Optimizer, state: Optional[dict]) -> None:
        scaler = self.scaler(optimizer)
        if scaler is not None and state:
            scaler.load_state_dict(state)


def save_with_scaler(optimizer: Optimizer, scaling: LossScaling) -> dict:
    """The optimizer's state dict, with the fp16 scaler's state under ``"grad_scaler"`` when it has one."""
    state = optimizer.state_dict()
    scaler_state = scaling.state_dict(optimizer)
    if scaler_state is not None:
        state["grad_scaler"] = scaler_state
    return state


def load_with_scaler(optimizer: Optimizer, scaling: LossScaling, state: dict) -> None:
    """Inverse of ``save_with_scaler`` (files without a scaler state load as before)."""
    state = dict(state)
    scaling.load_state_dict(optimizer, state.pop("grad_scaler", None))
    optimizer.load_state_dict(state)
