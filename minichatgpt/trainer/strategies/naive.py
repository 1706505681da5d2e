"""Plain PyTorch on one device (CPU or one GPU)."""

from contextlib import nullcontext
from typing import Callable, Optional

import torch
import torch.nn as nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset

from .base import Strategy
from .utils import EpochSampler, load_object, load_state_dict, save_object, save_state_dict


class NaiveStrategy(Strategy):
    """Single-process training; the reference backend the distributed ones are checked against.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: CUDA when available, else CPU.
    """

    def __init__(self, device: Optional[str] = None):
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
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
                prepared.append((model.to(self.device), optim))
            elif item is None:
                prepared.append(None)
            else:
                prepared.append(item.to(self.device))
        return prepared[0] if len(prepared) == 1 else prepared

    def backward(self, loss: torch.Tensor, model: nn.Module, optimizer: Optimizer) -> None:
        loss.backward()

    def clip_grad_norm(self, model: nn.Module, optimizer: Optimizer, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def optimizer_step(self, optimizer: Optimizer, model: nn.Module) -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def setup_dataloader(self, dataset: Dataset, batch_size: int, shuffle: bool = True,
                         collate_fn: Optional[Callable] = None, drop_last: bool = False,
                         pin_memory: bool = False, seed: int = 42) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(dataset, shuffle, seed),
                          collate_fn=collate_fn, drop_last=drop_last, pin_memory=pin_memory)

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        return model

    def gathered_params(self, model: nn.Module):
        return nullcontext()

    def save_model(self, model: nn.Module, path: str, only_rank0: bool = True) -> None:
        save_state_dict(self.unwrap_model(model).state_dict(), path)

    def load_model(self, model: nn.Module, path: str, strict: bool = True) -> None:
        self.unwrap_model(model).load_state_dict(load_state_dict(path), strict=strict)

    def save_optimizer(self, optimizer: Optimizer, path: str, only_rank0: bool = False) -> None:
        save_object(optimizer.state_dict(), path)

    def load_optimizer(self, optimizer: Optimizer, path: str) -> None:
        optimizer.load_state_dict(load_object(path))
