"""Frozen models kept in CPU memory between their forwards (``offload_frozen`` of the naive and DDP strategies,
``--offload_reference_model``), as DeepSpeed-Chat offloads its reference model.

PPO runs the reference and reward models once per rollout batch, without gradients; between those forwards
their weights need not occupy the accelerator. Hooks around ``forward`` bring them in and drop them again.
The weights are frozen, so the host copy stays exact: dropping is just pointing each parameter back at it
(no device-to-host copy), and with CUDA the host copy is pinned so the next load is an asynchronous copy.
"""

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

CPU = torch.device("cpu")


def shares_trained_parameters(module: nn.Module, prepared: Sequence) -> bool:
    """Whether frozen ``module`` holds a parameter of a trained model among ``prepare``'s arguments (a reward model
    sharing a LoRA critic's backbone): it cannot leave the device without taking trained weights along."""
    ids = {id(p) for item in prepared if isinstance(item, tuple) for p in item[0].parameters()}
    return any(id(p) in ids for p in module.parameters())


class ForwardPlacement:
    """The hooks of one offloaded module; ``remove()`` takes them off (the module stays where it is).

    Args:
        module: a frozen module; its parameters and buffers move to the CPU now.
        device: where its forward computes.
    """

    def __init__(self, module: nn.Module, device: torch.device):
        module.to(CPU)
        self.device = torch.device(device)
        self.pinned = self.device.type == "cuda"
        if any(p.requires_grad for p in module.parameters()):
            raise ValueError("only frozen modules (no parameter requiring grad) can be offloaded between forwards: "
                             "the host copy would miss their updates")
        # (owner, name, parameter, host data): ``module.to`` may swap in new Parameter objects (it does for devices
        # whose tensors cannot share a type with CPU ones), so dropping puts the original objects back by name.
        self.host: List[Tuple[nn.Module, str, nn.Parameter, torch.Tensor]] = []
        for owner in module.modules():
            for name, param in owner._parameters.items():
                if param is not None:
                    if self.pinned and not param.data.is_pinned():
                        param.data = param.data.pin_memory()
                    self.host.append((owner, name, param, param.data))
        self._handles = [module.register_forward_pre_hook(self._load),
                         module.register_forward_hook(self._drop, always_call=True)]

    def _load(self, module: nn.Module, args) -> None:
        module.to(self.device, non_blocking=self.pinned)

    def _drop(self, module: nn.Module, args, output) -> None:
        for owner, name, param, host in self.host:
            param.data = host
            owner._parameters[name] = param
        module.to(CPU)  # buffers (small); the parameters are already back

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def offload_between_forwards(module: nn.Module, device: torch.device) -> nn.Module:
    """Keep frozen ``module`` on the CPU and move it to ``device`` only for each forward; returns it."""
    module.forward_placement = ForwardPlacement(module, device)
    return module
