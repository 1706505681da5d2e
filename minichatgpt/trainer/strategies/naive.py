"""Plain PyTorch on one device (CPU or one GPU)."""

from contextlib import nullcontext
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset

from .base import Strategy
from .mixed import MixedPrecision
from .offload import shares_trained_parameters
from .precision import load_with_scaler, save_with_scaler
from .utils import EpochSampler, load_object, load_state_dict, save_object, save_state_dict


class NaiveStrategy(Strategy):
    """Single-process training; the reference backend the distributed ones are checked against.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: CUDA when available, else CPU.
        precision: ``"fp32"``, ``"bf16"`` (bf16 weights, float32 masters and optimizer state) or ``"fp16"``
            (autocast over float32 weights, loss scaling); see ``strategies.mixed``.
        offload_frozen: keep frozen models (reference, reward) in CPU memory, moving them to the device only
            for their forward (``strategies.offload``).
    """

    def __init__(self, device: Optional[str] = None, precision: str = "fp32", offload_frozen: bool = False):
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.offload_frozen = offload_frozen
        self.mixed = MixedPrecision(precision, self._device)
        self.precision = self.mixed.precision
        self.setup_distributed()

    @property
    def device(self) -> torch.device:
        return self._device

    def setup_distributed(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.set_device(self._device)

    def model_init_context(self):
        return nullcontext()

    def prepare(self, *models):
        prepared = []
        for item in models:
            if isinstance(item, tuple):
                model, optim = item
                prepared.append((self.mixed.prepare_trained(model, optim), optim))
            elif item is None:
                prepared.append(None)
            else:
                offload = self.offload_frozen and not shares_trained_parameters(item, models)
                prepared.append(self.mixed.prepare_frozen(item, offload))
        return prepared[0] if len(prepared) == 1 else prepared

    def backward(self, loss: torch.Tensor, model: nn.Module, optimizer: Optimizer) -> None:
        self.mixed.backward(loss, optimizer)

    def clip_grad_norm(self, model: nn.Module, optimizer: Optimizer, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(self.mixed.trained_parameters(model, optimizer), max_norm)

    def optimizer_step(self, optimizer: Optimizer, model: nn.Module) -> None:
        self.mixed.step(optimizer)

    def zero_grad(self, optimizer: Optimizer, model: nn.Module) -> None:
        self.mixed.skip(optimizer)

    def setup_dataloader(self, dataset: Dataset, batch_size: int, shuffle: bool = True,
                         collate_fn: Optional[Callable] = None, drop_last: bool = False,
                         pin_memory: bool = False, seed: int = 42) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(dataset, shuffle, seed),
                          collate_fn=collate_fn, drop_last=drop_last, pin_memory=pin_memory)

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        return model

    def gathered_params(self, model: nn.Module):
        return nullcontext()

    def full_state_dict(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        return self.mixed.state_dict(self.unwrap_model(model))  # float32 masters of bf16 working weights

    def save_model(self, model: nn.Module, path: str, only_rank0: bool = True) -> None:
        save_state_dict(self.full_state_dict(model), path)

    def load_model(self, model: nn.Module, path: str, strict: bool = True) -> None:
        self.mixed.load_state_dict(self.unwrap_model(model), load_state_dict(path), strict=strict)

    def save_optimizer(self, optimizer: Optimizer, path: str, only_rank0: bool = False) -> None:
        save_object(save_with_scaler(optimizer, self.mixed.scaling), path)

    def load_optimizer(self, optimizer: Optimizer, path: str) -> None:
        load_with_scaler(optimizer, self.mixed.scaling, load_object(path))
