"""The strategy contract: how models, optimizers, data and checkpoints meet a compute backend.

A strategy knows nothing about actors, critics or replay buffers; it sees modules, optimizers,
datasets and files. Each backend is an independent class implementing this interface; shared code
lives in module functions (``minichatgpt.trainer.strategies.utils``), not in a base-class body.
"""

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset

ModelOrModelOptim = Union[nn.Module, Tuple[nn.Module, Optimizer]]


class Strategy(ABC):
    """Interface every backend implements (see DESIGN section 3)."""

    #: True when each rank holds only a shard of the optimizer state (ZeRO, FSDP, Gemini).
    shards_optimizer: bool = False
    #: True when each rank holds only a shard of the parameters (FSDP, ZeRO-3, Gemini).
    shards_parameters: bool = False
    #: False when ``gathered_params`` leaves parameters sharded (the engine gathers them per forward),
    #: so ranks must generate in lockstep.
    gathers_for_generation: bool = True
    #: True when the engine measures (and clips) the gradient norm inside its optimizer step, so
    #: ``clip_grad_norm``'s value is known only after ``optimizer_step`` (DeepSpeed, ColossalAI).
    clips_in_step: bool = False
    #: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the dtype forwards compute in (float32 masters are kept).
    precision: str = "fp32"

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """The device this rank computes on."""

    @property
    def rank(self) -> int:
        return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

    @property
    def world_size(self) -> int:
        return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1

    def is_rank0(self) -> bool:
        return self.rank == 0

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.is_rank0():
            print(*args, **kwargs)

    def barrier(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    @abstractmethod
    def setup_distributed(self) -> None:
        """Initialize the process group (if any) and pick this rank's device."""

    @abstractmethod
    def model_init_context(self) -> AbstractContextManager:
        """Context in which models are built (e.g. lazy/sharded init for large models)."""

    @abstractmethod
    def prepare(self, *models: ModelOrModelOptim) -> Any:
        """Wrap models (and their optimizers) for this backend; returns them in the same structure.

        ``(model, optim)`` pairs are trained models; bare modules are frozen (reference, reward) models.
        A single argument is returned unpacked.
        """

    @abstractmethod
    def backward(self, loss: torch.Tensor, model: nn.Module, optimizer: Optimizer) -> None:
        """Back-propagate ``loss`` through ``model``."""

    @abstractmethod
    def clip_grad_norm(self, model: nn.Module, optimizer: Optimizer, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm of ``model`` to ``max_norm``; return the norm before clipping."""

    @abstractmethod
    def optimizer_step(self, optimizer: Optimizer, model: nn.Module) -> None:
        """Apply the accumulated gradients and zero them."""

    def zero_grad(self, optimizer: Optimizer, model: nn.Module) -> None:
        """Drop the accumulated gradients without stepping (a skipped, non-finite step)."""
        optimizer.zero_grad(set_to_none=True)

    @abstractmethod
    def setup_dataloader(self, dataset: Dataset, batch_size: int, shuffle: bool = True,
                         collate_fn: Optional[Callable] = None, drop_last: bool = False,
                         pin_memory: bool = False, seed: int = 42) -> DataLoader:
        """A data loader whose sampler gives each rank its own part of ``dataset``."""

    @abstractmethod
    def unwrap_model(self, model: nn.Module) -> nn.Module:
        """The user's module inside whatever wrapper ``prepare`` added."""

    @abstractmethod
    def gathered_params(self, model: nn.Module) -> AbstractContextManager:
        """Context in which ``unwrap_model(model)`` holds full (unsharded) parameters, for generation."""

    def full_state_dict(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """The whole model's state dict, gathered if sharded; complete on rank 0 (a collective call)."""
        return self.unwrap_model(model).state_dict()

    @abstractmethod
    def save_model(self, model: nn.Module, path: str, only_rank0: bool = True) -> None:
        """Write the full float32 state dict of ``model`` (gathered if sharded)."""

    @abstractmethod
    def load_model(self, model: nn.Module, path: str, strict: bool = True) -> None:
        """Load a state dict written by ``save_model`` into a prepared model."""

    @abstractmethod
    def save_optimizer(self, optimizer: Optimizer, path: str, only_rank0: bool = False) -> None:
        """Write optimizer state; sharded backends write one file per rank."""

    @abstractmethod
    def load_optimizer(self, optimizer: Optimizer, path: str) -> None:
        """Load optimizer state written by ``save_optimizer`` (each rank its own part)."""

    def all_reduce_mean(self, values: Sequence[float]) -> list:
        """Average a list of floats over ranks (for metrics); identity on one process."""
        if not torch.distributed.is_initialized():
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return (t / self.world_size).tolist()
