"""Mixed precision of the replicated strategies (naive, DDP): what ``precision`` does to models, gradients,
optimizer steps and checkpoints.

* ``bf16``: models hold bf16 working weights; each trained parameter has a float32 master copy, which is
  what the optimizer updates (so its state is float32 too) and what checkpoints hold. Gradients are
  copied to the masters before clipping, the masters are copied back after each step. Frozen models
  (reference, reward model, a LoRA model's base weights) are simply bf16.
* ``fp16``: ``torch.autocast`` over float32 weights, with a dynamic gradient scaler (standard AMP): fp16
  weights would overflow where bf16's wider exponent does not.
* ``fp32``: nothing changes.

Why bf16 weights rather than autocast for bf16: measured on a CPU (benchmarks/README.md, "Mixed
precision"), autocast's per-op casts left a GPT-2 ``xs`` forward+backward about as slow as float32, while bf16
weights made it 1.3-2.3x faster; the float32 masters keep updates far below bf16's resolution (an lr of
1e-6 moves a weight by ~1e-6 relative, bf16 resolves ~4e-3), which bf16 weights alone would round away.
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.optim import Optimizer

from .offload import CPU, offload_between_forwards
from .precision import LossScaling, as_dtype, autocast_module, precision_name


class MixedPrecision:
    """The precision half of a replicated strategy; the strategy calls it at each step of its contract.

    Args:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device: where the models compute.
    """

    def __init__(self, precision: str, device: torch.device):
        self.precision, self.device = precision_name(precision), device
        self.dtype = as_dtype(self.precision)
        self.scaling = LossScaling(self.precision, device.type)
        self._masters: Dict[int, List[Tuple[nn.Parameter, nn.Parameter]]] = {}  # id(optim) -> (working, master)
        self._by_param: Dict[int, nn.Parameter] = {}  # id(working parameter) -> its master
        self._pending: Dict[int, bool] = {}  # id(optim) -> gradients not yet moved to the masters

    @property
    def master_weights(self) -> bool:
        return self.dtype == torch.bfloat16

    def prepare_frozen(self, model: nn.Module, offload: bool = False) -> nn.Module:
        """Cast (bf16) or autocast (fp16) a frozen model; on the device, or with ``offload`` kept in CPU memory and
        moved to the device only for each forward (``offload.offload_between_forwards``)."""
        model = model.to(CPU if offload else self.device)
        model = model.to(self.dtype) if self.master_weights else autocast_module(model, self.dtype, self.device.type)
        return offload_between_forwards(model, self.device) if offload else model

    def prepare_trained(self, model: nn.Module, optim: Optimizer) -> nn.Module:
        """Move ``model``; with bf16, give ``optim`` float32 masters of its parameters and cast ``model``."""
        model = model.to(self.device)
        if not self.master_weights:
            return autocast_module(model, self.dtype, self.device.type)
        if optim.state:
            raise ValueError("mixed precision needs a fresh optimizer in prepare: load its state after prepare")
        pairs = []
        for group in optim.param_groups:
            masters = []
            for param in group["params"]:
                master = nn.Parameter(param.detach().float().clone())
                pairs.append((param, master))
                self._by_param[id(param)] = master
                masters.append(master)
            group["params"] = masters
        self._masters[id(optim)] = pairs
        return model.to(self.dtype)  # in place: the working parameters stay the same objects

    def backward(self, loss: torch.Tensor, optimizer: Optimizer) -> None:
        self.scaling.backward(loss, optimizer)
        self._pending[id(optimizer)] = True

    def _grads_to_masters(self, optimizer: Optimizer) -> None:
        if not self._pending.pop(id(optimizer), False):
            return
        for param, master in self._masters.get(id(optimizer), ()):
            master.grad = None if param.grad is None else param.grad.float()
            param.grad = None

    def trained_parameters(self, model: nn.Module, optimizer: Optimizer) -> List[nn.Parameter]:
        """What clipping measures: the masters' float32 gradients, or the model's own."""
        self._grads_to_masters(optimizer)
        self.scaling.unscale(optimizer)
        pairs = self._masters.get(id(optimizer))
        return [master for _, master in pairs] if pairs is not None else list(model.parameters())

    def step(self, optimizer: Optimizer) -> None:
        self._grads_to_masters(optimizer)
        self.scaling.step(optimizer)  # zeroes the masters' gradients too
        with torch.no_grad():
            for param, master in self._masters.get(id(optimizer), ()):
                param.copy_(master)

    def skip(self, optimizer: Optimizer) -> None:
        self._grads_to_masters(optimizer)
        self.scaling.skip(optimizer)

    def state_dict(self, module: nn.Module) -> Dict[str, torch.Tensor]:
        """``module``'s state dict with each trained parameter's float32 master in place of its working copy."""
        state = module.state_dict()
        for name, param in module.named_parameters(remove_duplicate=False):
            if id(param) in self._by_param and name in state:
                state[name] = self._by_param[id(param)].detach()
        return state

    def load_state_dict(self, module: nn.Module, state: Dict[str, torch.Tensor], strict: bool = True) -> None:
        """Load into the working weights and the masters (which would otherwise overwrite it at the next step)."""
        module.load_state_dict(state, strict=strict)
        with torch.no_grad():
            for name, param in module.named_parameters(remove_duplicate=False):
                if id(param) in self._by_param and name in state:
                    self._by_param[id(param)].copy_(state[name])

    def ddp_comm_hook(self) -> Optional[callable]:
        """With bf16 weights, a DDP hook that all-reduces the gradients in float32 (as FSDP's reduce_dtype)."""
        return _fp32_allreduce_hook if self.master_weights else None


def _fp32_allreduce_hook(process_group, bucket):
    """DDP communication hook: average a bucket of bf16 gradients in float32, write the result back."""
    buffer = bucket.buffer()
    group = process_group or dist.group.WORLD
    tensor = buffer.float().div_(dist.get_world_size(group))
    future = dist.all_reduce(tensor, group=group, async_op=True).get_future()

    def write_back(done):
        buffer.copy_(done.value()[0])
        return buffer

    return future.then(write_back)
