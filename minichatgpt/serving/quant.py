"""Weight quantization for inference (8-bit and 4-bit), and model memory measurement.

Two maintained libraries do the work, picked by device unless ``backend=`` says otherwise:

* CUDA: bitsandbytes. ``8bit`` is LLM.int8() (``Linear8bitLt``, arXiv:2208.07339), ``4bit`` is NF4 with
  double quantization (``Linear4bit``, QLoRA arXiv:2305.14314). bitsandbytes >= 0.45 also has CPU
  kernels for both, which is how this code path is tested on machines without a GPU.
* CPU: torchao. ``8bit`` is ``Int8WeightOnlyConfig`` (per-row int8 weights, activations in the model's
  dtype). ``4bit`` is ``PrototypeInt4WeightOnlyConfig`` (``Int4OpaqueTensor``: groups of 32 int4
  weights with a scale and zero point, packed for PyTorch's own CPU kernel
  ``aten._weight_int4pack_mm_for_cpu``). torchao's stable ``Int4WeightOnlyConfig`` has no CPU packing
  format in torchao 0.18 (its formats need CUDA or the ``mslk`` package), hence the prototype config.
  That kernel is fast with bfloat16 activations and slow with float32 ones, so 4-bit on CPU first casts
  the model to bfloat16.

Only the ``nn.Linear`` layers of the transformer blocks are quantized. The LM head stays in full
precision: it is often tied to the input embedding, and quantizing it would untie (and so duplicate)
that matrix. GPT-2's ``Conv1D`` layers (a transposed linear) are turned into ``nn.Linear`` first.
"""

import logging
from typing import Dict, Optional

import torch
import torch.nn as nn

from ..extras import require

QUANT_MODES = ("8bit", "4bit")
BACKENDS = ("bitsandbytes", "torchao")
# Groups of 32 weights share a scale and zero point (as llama.cpp's Q4 formats do): 5 bits per weight
# in all, and measurably closer to full precision than groups of 64 or 128 (docs/serving.md).
INT4_GROUP_SIZE = 32
INT4_CPU_ROW_MULTIPLE = 16  # the CPU int4 kernel packs output rows by 16
BNB_CPU_4BIT_BLOCK = 64

logger = logging.getLogger(__name__)


def default_backend(device: torch.device) -> str:
    return "bitsandbytes" if torch.device(device).type == "cuda" else "torchao"


def quantize_model(model: nn.Module, mode: str, device: torch.device, backend: Optional[str] = None) -> nn.Module:
    """Quantize the linear layers of ``model`` in place and move it to ``device``.

    Args:
        model: a Hugging Face causal LM (LoRA adapters already merged).
        mode: ``"8bit"`` or ``"4bit"``.
        device: where the model runs; picks the backend when ``backend`` is None.
        backend: ``"bitsandbytes"`` or ``"torchao"`` (torchao 4-bit runs on CPU only).

    Returns:
        The same model, quantized, on ``device``, in eval mode.
    """
    if mode not in QUANT_MODES:
        raise ValueError(f"quantization mode must be one of {QUANT_MODES}, got {mode!r}")
    device = torch.device(device)
    backend = backend or default_backend(device)
    if backend not in BACKENDS:
        raise ValueError(f"quantization backend must be one of {BACKENDS}, got {backend!r}")
    require((backend,), "cuda" if backend == "bitsandbytes" else "quant", f"{mode} quantization with {backend}")
    convert_conv1d(model)
    if backend == "bitsandbytes":
        _quantize_bitsandbytes(model, mode, device)
    elif mode == "8bit":
        _quantize_torchao_int8(model.to(device))
    else:
        if device.type != "cpu":
            raise ValueError("torchao 4-bit is wired for the CPU kernel here; use backend='bitsandbytes' on CUDA")
        _quantize_torchao_int4(model.to(device=device, dtype=torch.bfloat16))
    return model.eval()


def linear_layers(model: nn.Module) -> Dict[str, nn.Linear]:
    """``{name: layer}`` of every ``nn.Linear`` except the LM head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module is not head}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def convert_conv1d(model: nn.Module) -> nn.Module:
    """Replace transformers' ``Conv1D`` (GPT-2's projections, weight stored (in, out)) by ``nn.Linear``.

    Both quantization libraries only know ``nn.Linear``; the two compute the same function.
    """
    from transformers.pytorch_utils import Conv1D

    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            n_in, n_out = module.weight.shape
            linear = nn.Linear(n_in, n_out, bias=module.bias is not None,
                               device=module.weight.device, dtype=module.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(module.weight.t())
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
            _replace(model, name, linear)
    return model


def _import_torchao():
    # torchao logs a warning for each CUDA extension it cannot load on a CPU-only machine.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    import torchao.quantization

    return torchao.quantization


def _quantize_torchao_int8(model: nn.Module) -> None:
    ao = _import_torchao()
    names = set(linear_layers(model))
    ao.quantize_(model, ao.Int8WeightOnlyConfig(set_inductor_config=False), filter_fn=lambda module, fqn: fqn in names)


def _quantize_torchao_int4(model: nn.Module) -> None:
    _import_torchao()
    from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import quantize_

    chosen = set()
    for name, layer in linear_layers(model).items():
        if layer.in_features % INT4_GROUP_SIZE or layer.out_features % INT4_CPU_ROW_MULTIPLE:
            logger.warning("%s %s: the CPU int4 layout needs inputs divisible by %d and outputs by %d; kept "
                           "in %s", name, tuple(layer.weight.shape), INT4_GROUP_SIZE, INT4_CPU_ROW_MULTIPLE,
                           layer.weight.dtype)
        else:
            chosen.add(name)
    quantize_(model, PrototypeInt4WeightOnlyConfig(group_size=INT4_GROUP_SIZE, set_inductor_config=False),
              filter_fn=lambda module, fqn: fqn in chosen)


def _quantize_bitsandbytes(model: nn.Module, mode: str, device: torch.device) -> None:
    import bitsandbytes as bnb

    dtype = next(model.parameters()).dtype
    compute_dtype = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
    for name, layer in linear_layers(model).items():
        if mode == "4bit" and device.type == "cpu" and layer.in_features % BNB_CPU_4BIT_BLOCK:
            # bitsandbytes' CPU kernel repacks 4-bit weights in blocks of 64 inputs and fails on others.
            logger.warning("%s %s: bitsandbytes' CPU 4-bit kernel needs a multiple of %d inputs, kept in %s",
                           name, tuple(layer.weight.shape), BNB_CPU_4BIT_BLOCK, layer.weight.dtype)
            continue
        weight = layer.weight.data
        has_bias = layer.bias is not None
        if mode == "8bit":
            new = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias=has_bias,
                                      has_fp16_weights=False, threshold=6.0)
            new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        else:
            new = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=has_bias,
                                    compute_dtype=compute_dtype, quant_type="nf4", compress_statistics=True)
            new.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", compress_statistics=True)
        if has_bias:
            new.bias = nn.Parameter(layer.bias.data, requires_grad=False)
        _replace(model, name, new)
    model.to(device)  # bitsandbytes quantizes the weights when they move to the device


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Storage of a tensor, looking inside quantized tensors.

    torchao's quantized weights are tensor subclasses whose real data are inner tensors (packed ints,
    scales, zero points); bitsandbytes keeps its scales next to the packed data (``SCB`` for int8, a
    ``quant_state`` for 4-bit, itself quantized with double quantization).
    """
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, n)) for n in names if getattr(tensor, n) is not None)
    total = tensor.numel() * tensor.element_size()
    extras = [getattr(tensor, "SCB", None), getattr(tensor, "quant_state", None)]
    return total + sum(_state_bytes(extra) for extra in extras if extra is not None)


def _state_bytes(state) -> int:
    if isinstance(state, torch.Tensor):
        return tensor_bytes(state)
    if hasattr(state, "__dict__"):
        return sum(_state_bytes(value) for value in vars(state).values()
                   if isinstance(value, torch.Tensor) or hasattr(value, "absmax"))
    return 0


def model_memory_bytes(model: nn.Module) -> int:
    """Bytes held by the parameters and buffers of ``model`` (tied weights counted once)."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor_bytes(tensor)
    return total


def format_bytes(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB"

