"""Low-rank adapters (LoRA, arXiv:2106.09685) as functions over peft, not a base class.

Adapters go on every linear projection of attention and MLP blocks (peft's ``"all-linear"``, which
also understands GPT-2's ``Conv1D``) and never on the LM head. Saved adapters are plain peft
directories, loadable with ``peft.PeftModel.from_pretrained`` by anyone.
"""

import copy
import warnings
from contextlib import contextmanager, nullcontext
from typing import Callable, ContextManager, Optional

import torch
import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model

LORA_BIAS_MODES = ("none", "all", "lora_only")


def apply_lora(model: nn.Module, rank: int, alpha: Optional[float] = None, dropout: float = 0.0,
               train_bias: str = "none", task_type: Optional[str] = None) -> PeftModel:
    """Freeze ``model`` and add trainable rank-``rank`` adapters; returns the peft-wrapped model.

    Args:
        rank: adapter rank r (> 0).
        alpha: scaling numerator; the update is ``(alpha / r) * B A``. Defaults to ``r`` (scale 1), so
            learning rates carry over from full fine-tuning.
        train_bias: ``"none"`` (only adapters train), ``"all"`` (every bias too) or ``"lora_only"``
            (biases of adapted layers).
        task_type: peft task type recorded in the adapter config (``"CAUSAL_LM"`` for actors).
    """
    if rank <= 0:
        raise ValueError(f"lora_rank must be > 0 to add adapters, got {rank}")
    if train_bias not in LORA_BIAS_MODES:
        raise ValueError(f"lora_train_bias must be one of {LORA_BIAS_MODES}, got {train_bias!r}")
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
                        bias=train_bias, target_modules="all-linear", task_type=task_type)
    return get_peft_model(model, config)


def is_lora(model: nn.Module) -> bool:
    return isinstance(model, PeftModel)


def adapters_disabled(model: nn.Module):
    """Context in which a LoRA model computes with its frozen base weights only (no-op otherwise).

    This is how the reference policy and the reward model share weights with the actor and critic
    instead of keeping second copies.
    """
    return model.disable_adapter() if is_lora(model) else nullcontext()


def trained_base_parameters(model: nn.Module) -> dict:
    """{name: parameter} of a LoRA model's trainable weights that are not adapters: the biases that
    ``train_bias="all"`` or ``"lora_only"`` trains. Empty when only adapters train."""
    if not is_lora(model):
        return {}
    return {n: p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}


def frozen_base(model: nn.Module) -> Callable[[], ContextManager]:
    """A context factory in which ``model`` computes as it is now with adapters off, even after training.

    "Adapters off" alone is the starting point only while nothing but adapters trains. Trained base
    biases are snapshotted here and, inside the context, copied in place of the trained values,
    which are put back on exit. Parameters must be whole tensors on this process (not ZeRO-3
    partitions or FSDP shards); with sharded parameters keep a frozen reference model instead.
    """
    params = trained_base_parameters(model)
    if not params:
        return lambda: adapters_disabled(model)
    for name, p in params.items():
        if p.numel() != getattr(p, "ds_numel", p.numel()) or type(p.data) is not torch.Tensor:
            raise ValueError(f"{name} is sharded: a shared reference cannot restore its trained bias; "
                             "pass a frozen reference model (initial_model) instead")
    snapshot = {name: p.detach().clone() for name, p in params.items()}

    @contextmanager
    def reference():
        trained = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(snapshot[name])
        try:
            with warnings.catch_warnings():  # peft warns that trained biases differ from the base: restored here
                warnings.filterwarnings("ignore", message=".*disabling adapter layers with bias.*")
                with adapters_disabled(model):
                    yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(trained[name])

    return reference


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain (non-peft) copy of ``model`` with adapters folded into the base weights.

    The training model is left untouched, so this is safe to call mid-training for a save.
    """
    if not is_lora(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


def save_adapter(model: PeftModel, directory: str) -> None:
    """Write only the adapter weights and config (peft format) to ``directory``."""
    model.save_pretrained(directory)
