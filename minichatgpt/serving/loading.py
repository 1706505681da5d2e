"""Load a trained model for inference: base weights, an optional LoRA adapter, optional quantization."""

import os
from typing import Optional, Tuple

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..nn import load_model, load_tokenizer
from .quant import quantize_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: Optional[str] = None) -> torch.device:
    """``device`` if given, else the GPU when there is one, else the CPU."""
    if device and device != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(dtype: Optional[str], device: torch.device) -> torch.dtype:
    """``dtype`` by name; ``None``/``"auto"`` is bfloat16 (or float16 on older GPUs) on CUDA, float32 on CPU."""
    if dtype and dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)} or 'auto', got {dtype!r}")
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_for_inference(model_path: str, lora: Optional[str] = None, quant: Optional[str] = None,
                       device: Optional[str] = None,
                       dtype: Optional[str] = None) -> Tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer ready to generate.

    Args:
        model_path: ``save_pretrained`` directory, hub name or ``.gguf`` file.
        lora: a peft adapter directory; its weights are merged into the base model (no extra cost per
            token, and quantization then covers the merged weights). Its tokenizer is used if it has one.
        quant: None, ``"8bit"`` or ``"4bit"`` (see ``minichatgpt.serving.quant``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None picks the GPU when there is one.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or None/``"auto"``.
    """
    device = pick_device(device)
    if quant == "8bit" and device.type == "cuda" and dtype in (None, "auto"):
        dtype = "float16"  # LLM.int8() computes in float16 and would cast bfloat16 inputs every call
    model = load_model(model_path, dtype=pick_dtype(dtype, device))
    tokenizer_path = model_path
    if lora is not None:
        from peft import PeftModel

        if not os.path.isdir(lora):
            raise FileNotFoundError(f"LoRA adapter directory {lora!r} does not exist")
        model = PeftModel.from_pretrained(model, lora).merge_and_unload()
        if os.path.isfile(os.path.join(lora, "tokenizer_config.json")):
            tokenizer_path = lora
    tokenizer = load_tokenizer(tokenizer_path)
    if quant:
        model = quantize_model(model, quant, device)
    else:
        model = model.to(device)
    return model.eval(), tokenizer
