"""Saving a model as a Hugging Face directory tensor by tensor, without a merged or cast copy of it.

``save_pretrained`` of a LoRA model used to deep-copy the model, merge its adapters into the copy and let
``safetensors`` turn every tensor into bytes: three full copies of the weights at once (about 0.5 GB each
for SmolLM2-135M in float32). Here the base weights are handed to ``transformers``' ``save_pretrained``
under the merged model's names, and each tensor is cast to the saved dtype, has its adapter delta added
(what peft's merge adds: ``W + get_delta_weight``) and is written to the file one at a time; the extra
memory is one tensor. The file holds the same bytes ``safetensors.torch.save_file`` would write.
"""

import json
import struct
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional

import torch
import torch.nn as nn

# safetensors' dtype names
_DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL"}

Transform = Callable[[str, torch.Tensor], torch.Tensor]


def _saved_dtype(tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.dtype:
    return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype


def write_safetensors(tensors: Dict[str, torch.Tensor], path: str, metadata: Optional[Dict[str, str]] = None,
                      dtype: Optional[torch.dtype] = None, transform: Optional[Transform] = None) -> None:
    """Write a ``.safetensors`` file, materializing one output tensor at a time.

    Args:
        tensors: name -> tensor as held (any floating dtype; ``dtype`` casts floating ones on write).
        dtype: dtype of the written floating tensors; None keeps each tensor's own.
        transform: ``(name, tensor already cast) -> tensor`` of the same shape and dtype, applied on write
            (adds LoRA deltas).
    The layout is safetensors' own (tensors ordered by element size, largest first, then by name; the
    header padded with spaces to 8 bytes), so the file equals ``save_file``'s for the same final tensors.
    """
    order = sorted(tensors, key=lambda n: (-_saved_dtype(tensors[n], dtype).itemsize, n))
    header: Dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        t = tensors[name]
        size = t.numel() * _saved_dtype(t, dtype).itemsize
        header[name] = {"dtype": _DTYPE_NAMES[_saved_dtype(t, dtype)], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name in order:
            t = tensors[name].to(_saved_dtype(tensors[name], dtype))
            if transform is not None:
                t = transform(name, t)
            f.write(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)  # no bytes copy


@contextmanager
def streamed_weights(dtype: Optional[torch.dtype] = None, transform: Optional[Transform] = None) -> Iterator[None]:
    """Within this context, ``transformers``' ``save_pretrained`` writes its safetensors files with
    ``write_safetensors`` (cast to ``dtype``, ``transform`` applied tensor by tensor)."""
    import transformers.modeling_utils as modeling_utils

    original = modeling_utils.safe_save_file

    def save_file(tensors, filename, metadata=None):
        write_safetensors(tensors, filename, metadata, dtype=dtype, transform=transform)

    modeling_utils.safe_save_file = save_file
    try:
        yield
    finally:
        modeling_utils.safe_save_file = original


def merged_state(model: nn.Module) -> "tuple[nn.Module, Dict[str, torch.Tensor], Dict[str, Callable]]":
    """What saving ``model`` merged needs, without merging: (the Hugging Face model under any peft wrapper,
    its state dict under the merged model's names, {weight name: function giving the delta merging adds}).

    For a model without adapters: (model, its state dict, {}). No tensor is copied.
    """
    from .lora import is_lora

    if not is_lora(model):
        return model, model.state_dict(), {}
    base = model.get_base_model()
    deltas = {}
    for module_name, module in base.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            if getattr(module, "use_dora", {}).get("default") or getattr(module, "lora_bias", {}).get("default"):
                raise ValueError(f"{module_name}: streamed saving merges plain LoRA adapters only")
            deltas[f"{module_name}.weight"] = (lambda m=module: m.get_delta_weight("default"))
    state = {}
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor
    return base, state, deltas


def add_deltas(deltas: Dict[str, Callable[[], torch.Tensor]]) -> Transform:
    """The write-time transform adding each adapted weight's delta, rounded as peft's in-place
    ``weight.data += delta`` rounds it."""

    def transform(name: str, tensor: torch.Tensor) -> torch.Tensor:
        delta = deltas.get(name)
        return tensor if delta is None else (tensor + delta()).to(tensor.dtype)

    return transform


def save_streamed(model: nn.Module, directory: str, state: Dict[str, torch.Tensor],
                  deltas: Dict[str, Callable[[], torch.Tensor]], dtype: Optional[torch.dtype] = None) -> None:
    """``model.save_pretrained(directory)`` (a Hugging Face model) writing ``state`` streamed, floating tensors in
    ``dtype`` (None: as held) plus ``deltas``; config.json then records the dtype written."""
    with streamed_weights(dtype, add_deltas(deltas)):
        model.save_pretrained(directory, state_dict=state)
    if dtype is not None:
        model.config.dtype = str(dtype).split(".")[1]
        model.config.save_pretrained(directory)
