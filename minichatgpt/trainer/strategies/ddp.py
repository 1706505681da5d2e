"""PyTorch DistributedDataParallel: every rank holds the whole model, gradients are averaged."""

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset

from .base import Strategy
from .mixed import MixedPrecision
from .offload import shares_trained_parameters
from .precision import load_with_scaler, save_with_scaler
from .utils import (default_device, distributed_dataloader, join_process_group, load_object, load_state_dict,
                    prepare_models, save_object, save_state_dict, set_seed, should_write)


@dataclass
class DDPOptions:
    """Knobs of ``DDPStrategy``.

    Attributes:
        backend: process-group backend; default NCCL on GPUs, gloo on the CPU.
        timeout_s: how long a collective waits for the other ranks before failing.
        find_unused_parameters: needed when some trained parameters get no gradient in a step.
        bucket_cap_mb: gradient all-reduce bucket size (DDP's default when None).
        precision: ``"fp32"``, ``"bf16"`` (bf16 weights, float32 masters, optimizer state and gradient
            all-reduce) or ``"fp16"`` (autocast over float32 weights, loss scaling); see ``strategies.mixed``.
        offload_frozen: keep frozen models (reference, reward) in CPU memory, moving them to the device only
            for their forward (``strategies.offload``).
    """

    backend: Optional[str] = None
    timeout_s: float = 1800.0
    find_unused_parameters: bool = False
    bucket_cap_mb: Optional[float] = None
    precision: str = "fp32"
    offload_frozen: bool = False


class DDPStrategy(Strategy):
    """Data parallel over ``torchrun`` processes with ``torch.nn.parallel.DistributedDataParallel``.

    Trained models are wrapped in DDP; frozen models (reference, reward) are only moved to the device.
    Gradients are all-reduced in every ``backward``: the contract does not say which micro-batch ends an
    accumulation window, so each one syncs (correct, one all-reduce per micro-batch).

    Args:
        seed: seeds every rank alike, so models built on each rank start equal.
        **options: fields of ``DDPOptions``.
    """

    def __init__(self, seed: int = 42, **options):
        self.options = DDPOptions(**options)
        self.seed = seed
        self._device = default_device()
        self.mixed = MixedPrecision(self.options.precision, self._device)
        self.options.precision = self.mixed.precision
        self.setup_distributed()

    @property
    def device(self) -> torch.device:
        return self._device

    def setup_distributed(self) -> None:
        join_process_group(self._device, self.options.backend, self.options.timeout_s)
        set_seed(self.seed)

    def model_init_context(self):
        return nullcontext()

    @property
    def precision(self) -> str:
        return self.options.precision

    def prepare(self, *models):
        def wrap(model: nn.Module, optim: Optimizer):
            model = self.mixed.prepare_trained(model, optim)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            kwargs = {} if self.options.bucket_cap_mb is None else {"bucket_cap_mb": self.options.bucket_cap_mb}
            ddp = DDP(model, device_ids=device_ids, find_unused_parameters=self.options.find_unused_parameters,
                      **kwargs)
            if self.mixed.ddp_comm_hook() is not None:
                ddp.register_comm_hook(None, self.mixed.ddp_comm_hook())
            return ddp, optim

        def frozen(model: nn.Module) -> nn.Module:
            offload = self.options.offload_frozen and not shares_trained_parameters(model, models)
            return self.mixed.prepare_frozen(model, offload)

        return prepare_models(models, wrap, frozen)

    def backward(self, loss: torch.Tensor, model: nn.Module, optimizer: Optimizer) -> None:
        self.mixed.backward(loss, optimizer)

    def clip_grad_norm(self, model: nn.Module, optimizer: Optimizer, max_norm: float) -> torch.Tensor:
        # Gradients are already averaged, so every rank computes the same norm (and finds the same infs).
        return torch.nn.utils.clip_grad_norm_(self.mixed.trained_parameters(model, optimizer), max_norm)

    def optimizer_step(self, optimizer: Optimizer, model: nn.Module) -> None:
        self.mixed.step(optimizer)

    def zero_grad(self, optimizer: Optimizer, model: nn.Module) -> None:
        self.mixed.skip(optimizer)

    def setup_dataloader(self, dataset: Dataset, batch_size: int, shuffle: bool = True,
                         collate_fn: Optional[Callable] = None, drop_last: bool = False,
                         pin_memory: bool = False, seed: int = 42) -> DataLoader:
        return distributed_dataloader(dataset, batch_size, shuffle, collate_fn, drop_last, pin_memory, seed)

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, DDP) else model

    def gathered_params(self, model: nn.Module):
        return nullcontext()

    def full_state_dict(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        return self.mixed.state_dict(self.unwrap_model(model))  # float32 masters of bf16 working weights

    def save_model(self, model: nn.Module, path: str, only_rank0: bool = True) -> None:
        if should_write(only_rank0):
            save_state_dict(self.full_state_dict(model), path)
        self.barrier()

    def load_model(self, model: nn.Module, path: str, strict: bool = True) -> None:
        self.mixed.load_state_dict(self.unwrap_model(model), load_state_dict(path), strict=strict)

    def save_optimizer(self, optimizer: Optimizer, path: str, only_rank0: bool = False) -> None:
        # The state is replicated, so one copy is the whole state; only_rank0=False keeps one per node.
        if should_write(only_rank0):
            save_object(save_with_scaler(optimizer, self.mixed.scaling), path)
        self.barrier()

    def load_optimizer(self, optimizer: Optimizer, path: str) -> None:
        load_with_scaler(optimizer, self.mixed.scaling, load_object(path))
