"""PyTorch FSDP2 (``fully_shard``): parameters, gradients and optimizer state sharded over ranks (ZeRO-3).

FSDP2's public API (``torch.distributed.fsdp.fully_shard``) needs torch >= 2.6. It is imported when a strategy
is built, not with this module, so ``import minichatgpt`` and the other strategies work on the older torch of
the ColossalAI environment (torch<=2.5.1).
"""

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset

from ...extras import MissingDependency
from .base import Strategy
from .offload import shares_trained_parameters
from .precision import LossScaling, as_dtype, precision_name
from .utils import (broadcast_module, check_sharded_save, default_device, distributed_dataloader, join_process_group,
                    load_object, load_state_dict, prepare_models, rank_path, save_object, save_state_dict, set_seed,
                    should_write)

@dataclass
class FSDPOptions:
    """Knobs of ``FSDPStrategy``.

    Attributes:
        backend: process-group backend; default NCCL on GPUs, gloo on the CPU.
        timeout_s: how long a collective waits for the other ranks before failing.
        cpu_offload: keep the sharded parameters, gradients and optimizer step on the CPU.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the users' switch, read as ``param_dtype=precision``
            with gradients reduced in float32 (``MixedPrecisionPolicy(param_dtype, reduce_dtype=float32)``);
            fp16 also scales the loss (``ShardedGradScaler``). ``param_dtype``/``reduce_dtype`` set the
            policy directly instead.
        param_dtype: ``"bf16"``/``"fp16"`` (or a torch dtype) to compute in lower precision; the sharded
            parameters and optimizer state stay float32.
        reduce_dtype: dtype of the gradient reduce-scatter (default: ``param_dtype``).
        reshard_after_forward: free each layer's gathered parameters after its forward (less memory,
            one more all-gather in backward).
        offload_frozen: frozen models (reference, reward) keep their shards in CPU memory
            (``CPUOffloadPolicy``), each layer gathered onto the device only for its forward and freed after.
    """

    backend: Optional[str] = None
    timeout_s: float = 1800.0
    cpu_offload: bool = False
    precision: Optional[str] = None
    param_dtype: Union[str, torch.dtype, None] = None
    reduce_dtype: Union[str, torch.dtype, None] = None
    reshard_after_forward: bool = True
    offload_frozen: bool = False

    def __post_init__(self):
        if self.precision is not None and self.param_dtype is None:
            self.param_dtype = self.precision
            self.reduce_dtype = self.reduce_dtype or "fp32"
        self.precision = precision_name(self.param_dtype or "fp32")


def fsdp2():
    """The ``torch.distributed.fsdp`` module with FSDP2's public API, or ``MissingDependency`` on torch < 2.6."""
    import torch.distributed.fsdp as fsdp

    if not hasattr(fsdp, "fully_shard"):
        raise MissingDependency(f"FSDPStrategy (--strategy fsdp) needs torch>=2.6 for FSDP2's fully_shard, found "
                                f"torch {torch.__version__}: pip install 'torch>=2.6', or use ddp or deepspeed_*")
    return fsdp


def _dtensor():
    from torch.distributed.tensor import DTensor  # public from torch 2.5; only reached once fsdp2() passed

    return DTensor


def transformer_blocks(model: nn.Module) -> List[nn.Module]:
    """The repeated layers of a Hugging Face model: classes named in its ``_no_split_modules``, or else the
    members of every ``nn.ModuleList``. Each becomes one FSDP unit, so only one layer is gathered at a time."""
    names = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or [])}
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        blocks = [child for m in model.modules() if isinstance(m, nn.ModuleList) for child in m]
    return blocks


class FSDPStrategy(Strategy):
    """Fully sharded data parallel with FSDP2: each transformer layer is a unit, then the whole model.

    Trained and frozen models are both sharded (all ranks must call their forward the same number of
    times). The optimizer given to ``prepare`` is re-pointed at the sharded (DTensor) parameters and
    returned in its pair; create it before ``prepare`` and load its state after.

    Args:
        seed: seeds every rank alike (rank 0's weights are also broadcast before sharding).
        **options: fields of ``FSDPOptions``.
    """

    shards_optimizer = True
    shards_parameters = True

    def __init__(self, seed: int = 42, **options):
        fsdp2()  # fail here, before any process group, on a torch without FSDP2
        self.options = FSDPOptions(**options)
        self.seed = seed
        self._device = default_device()
        self.scaling = LossScaling(self.options.precision, self._device.type, sharded=True)
        self.setup_distributed()

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def precision(self) -> str:
        return self.options.precision

    def setup_distributed(self) -> None:
        join_process_group(self._device, self.options.backend, self.options.timeout_s)
        set_seed(self.seed)

    def model_init_context(self):
        return nullcontext()

    def _shard(self, model: nn.Module, offload_frozen: bool = False) -> nn.Module:
        """``offload_frozen``: a frozen model whose shards stay in CPU memory and whose root is freed after its
        forward too (no backward follows)."""
        opts, fsdp = self.options, fsdp2()
        model = model.to(self.device)  # whole, for the broadcast (NCCL needs device tensors); sharding frees it
        broadcast_module(model)
        kwargs = {"mp_policy": fsdp.MixedPrecisionPolicy(param_dtype=as_dtype(opts.param_dtype),
                                                         reduce_dtype=as_dtype(opts.reduce_dtype or opts.param_dtype))}
        if opts.cpu_offload or offload_frozen:
            kwargs["offload_policy"] = fsdp.CPUOffloadPolicy(pin_memory=self.device.type == "cuda")
        for block in transformer_blocks(model):
            fsdp.fully_shard(block, reshard_after_forward=opts.reshard_after_forward or offload_frozen, **kwargs)
        # The root's parameters are needed again right away by backward: keep them after forward.
        fsdp.fully_shard(model, reshard_after_forward=offload_frozen, **kwargs)
        if callable(getattr(model, "generate", None)):
            # Run the root's FSDP hooks around generate too, which calls the inner model, not forward.
            fsdp.register_fsdp_forward_method(model, "generate")
        return model

    def prepare(self, *models):
        def shard_trained(model: nn.Module, optim: Optimizer):
            if optim.state:
                raise ValueError("FSDPStrategy.prepare needs a fresh optimizer: load its state after prepare")
            names = {id(p): name for name, p in model.named_parameters()}
            unknown = [p for g in optim.param_groups for p in g["params"] if id(p) not in names]
            if unknown:
                raise ValueError(f"the optimizer holds {len(unknown)} tensors that are not parameters of its model")
            model = self._shard(model)
            sharded = dict(model.named_parameters())
            # fully_shard replaced every parameter by a DTensor shard: point the optimizer at those.
            for group in optim.param_groups:
                group["params"] = [sharded[names[id(p)]] for p in group["params"]]
            return model, optim

        def shard_frozen(model: nn.Module) -> nn.Module:
            return self._shard(model, self.options.offload_frozen and not shares_trained_parameters(model, models))

        return prepare_models(models, shard_trained, shard_frozen)

    def backward(self, loss: torch.Tensor, model: nn.Module, optimizer: Optimizer) -> None:
        self.scaling.backward(loss, optimizer)

    def clip_grad_norm(self, model: nn.Module, optimizer: Optimizer, max_norm: float) -> torch.Tensor:
        self.scaling.unscale(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return norm.full_tensor() if isinstance(norm, _dtensor()) else norm

    def optimizer_step(self, optimizer: Optimizer, model: nn.Module) -> None:
        self.scaling.step(optimizer)

    def zero_grad(self, optimizer: Optimizer, model: nn.Module) -> None:
        self.scaling.skip(optimizer)

    def setup_dataloader(self, dataset: Dataset, batch_size: int, shuffle: bool = True,
                         collate_fn: Optional[Callable] = None, drop_last: bool = False,
                         pin_memory: bool = False, seed: int = 42) -> DataLoader:
        return distributed_dataloader(dataset, batch_size, shuffle, collate_fn, drop_last, pin_memory, seed)

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        return model  # fully_shard works in place: the user's module is the sharded one

    @contextmanager
    def gathered_params(self, model: nn.Module):
        # Gather every unit once and keep it gathered: forwards inside the context then need no
        # collectives, so ranks may run different numbers of them (generation that stops early).
        units = [m for m in model.modules() if isinstance(m, fsdp2().FSDPModule)]
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()
                unit.set_reshard_after_forward(unit is not model and self.options.reshard_after_forward,
                                               recurse=False)

    def full_state_dict(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save_model(self, model: nn.Module, path: str, only_rank0: bool = True) -> None:
        # cpu_offload=True gathers the full state on rank 0 only; otherwise every rank gets it.
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=only_rank0))
        if should_write(only_rank0):
            save_state_dict(state, path)
        self.barrier()

    def load_model(self, model: nn.Module, path: str, strict: bool = True) -> None:
        state = load_state_dict(path) if self.is_rank0() else {}
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                    strict=strict))

    def save_optimizer(self, optimizer: Optimizer, path: str, only_rank0: bool = False) -> None:
        check_sharded_save(only_rank0, type(self).__name__)
        state, dtensor = optimizer.state_dict(), _dtensor()  # its per-parameter dicts are live: build new ones
        state["state"] = {index: {k: v.to_local().cpu() if isinstance(v, dtensor) else v for k, v in values.items()}
                          for index, values in state["state"].items()}
        save_object(state, rank_path(path, self.rank))
        self.barrier()

    def load_optimizer(self, optimizer: Optimizer, path: str) -> None:
        state, dtensor = load_object(rank_path(path, self.rank)), _dtensor()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for index, values in state["state"].items():
            param = params[index]
            if not isinstance(param, dtensor):
                continue
            for key, value in values.items():
                if torch.is_tensor(value) and value.shape == param.to_local().shape:
                    values[key] = dtensor.from_local(value.to(param.device), param.device_mesh, param.placements,
                                                     shape=param.shape, stride=param.stride())
        optimizer.load_state_dict(state)
