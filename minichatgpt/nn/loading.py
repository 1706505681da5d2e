"""Building Hugging Face models and tokenizers from a hub name, a local directory, a ``.gguf`` file or
a config, through the ``Auto*`` classes, so any causal LM family works the same way."""

import json
import os
from contextlib import contextmanager
from typing import Optional, Tuple, Union

import torch
import transformers
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig,
                          PreTrainedModel, PreTrainedTokenizerBase)

from ..extras import require
from ..tokenizer import prepare_tokenizer

@contextmanager
def quiet_transformers():
    """Silence transformers' per-load progress bars and key tables (e.g. a reward model's ``score``
    head reported as unexpected when only its backbone is loaded); errors still surface."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.utils.logging.enable_progress_bar()


ConfigLike = Union[PretrainedConfig, dict, str, None]

# transformers 5 renamed ``torch_dtype`` to ``dtype``; the ColossalAI extra pins 4.51.
_DTYPE_KWARG = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


def split_gguf(pretrained: str) -> Tuple[str, Optional[str]]:
    """``dir/model.gguf`` -> (``dir``, ``model.gguf``); any other path -> (path, None)."""
    if pretrained.endswith(".gguf"):
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"GGUF file {pretrained!r} does not exist")
        return os.path.dirname(os.path.abspath(pretrained)), os.path.basename(pretrained)
    return pretrained, None


def _check_local(pretrained: str) -> None:
    """Fail early, naming the path, when something that can only be a local path is missing.

    ``org/name`` may be a hub name, so only absolute, relative (``./``), home (``~``) and deeper paths
    are checked here.
    """
    looks_local = pretrained.startswith((".", "/", "~")) or pretrained.count("/") > 1
    if looks_local and not os.path.exists(os.path.expanduser(pretrained)):
        raise FileNotFoundError(f"model path {pretrained!r} does not exist")


def to_config(config: ConfigLike) -> Optional[PretrainedConfig]:
    """Accept a config object, a dict with ``model_type``, or a path/name; return a config object."""
    if config is None or isinstance(config, PretrainedConfig):
        return config
    if isinstance(config, dict):
        config = dict(config)
        return AutoConfig.for_model(config.pop("model_type"), **config)
    return AutoConfig.from_pretrained(config)


def load_model(pretrained: Optional[str] = None, config: ConfigLike = None, head: str = "causal_lm",
               dtype: Optional[torch.dtype] = None, trust_remote_code: bool = False,
               attn_implementation: Optional[str] = None) -> PreTrainedModel:
    """Build a model with (``head="causal_lm"``) or without (``head="backbone"``) its LM head.

    Args:
        pretrained: hub name, local directory, or path to a ``.gguf`` file. Takes precedence over config.
        config: config for a randomly initialized model when ``pretrained`` is None.
        head: ``"causal_lm"`` (AutoModelForCausalLM) or ``"backbone"`` (AutoModel: hidden states only,
            used by critics and reward models so no (B, T, V) logits are computed).
        dtype: parameter dtype; float32 by default (training keeps master weights in float32).
        trust_remote_code: allow a hub checkpoint's own modelling code to run.
        attn_implementation: ``"sdpa"``, ``"flash_attention_2"`` or ``"eager"``; None lets transformers choose.

    The dtype the checkpoint was stored in is kept as ``model.source_dtype`` (float32 for configs and GGUF
    files), the default dtype ``save_pretrained`` writes back.
    """
    auto = {"causal_lm": AutoModelForCausalLM, "backbone": AutoModel}[head]
    if attn_implementation == "flash_attention_2":
        check_flash_attention()
    options = {"trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    with quiet_transformers():
        model = _load(auto, pretrained, config, dtype, options)
    model.source_dtype = source_dtype(pretrained, trust_remote_code)
    return model


def check_flash_attention() -> None:
    """FlashAttention-2 needs the ``flash_attn`` package (CUDA only); say so before loading anything."""
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        raise ImportError("attn_implementation='flash_attention_2' needs the flash_attn package (pip install "
                          "flash-attn --no-build-isolation, on a CUDA machine); use 'sdpa' (the default) otherwise")


def source_dtype(pretrained: Optional[str], trust_remote_code: bool = False) -> torch.dtype:
    """The dtype a checkpoint's config says its weights are stored in; float32 when unknown (configs, GGUF)."""
    if pretrained is None or pretrained.endswith(".gguf"):
        return torch.float32
    try:
        config = AutoConfig.from_pretrained(os.path.expanduser(pretrained), trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return torch.float32
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def _load(auto, pretrained, config, dtype, options):
    if pretrained is None:
        if config is None:
            raise ValueError("either pretrained= or config= must be given")
        model = auto.from_config(to_config(config), **options)
        return model.to(dtype) if dtype is not None else model
    _check_local(pretrained)
    path, gguf_file = split_gguf(os.path.expanduser(pretrained))
    kwargs = {_DTYPE_KWARG: dtype or torch.float32, **options}
    if gguf_file is None:
        return auto.from_pretrained(path, **kwargs)
    require(("gguf",), "gguf", f"loading {pretrained}")
    model = auto.from_pretrained(path, gguf_file=gguf_file, **kwargs)
    # The GGUF weights are dequantized to plain tensors on load; dropping the quantizer marker lets
    # the trained model be saved as an ordinary Hugging Face directory.
    model.hf_quantizer = None
    model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    return model


def load_tokenizer(pretrained: str, eos_token: Optional[str] = None, pad_token: Optional[str] = None,
                   trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a hub name, a directory or a ``.gguf`` file, with EOS and pad set.

    GGUF chat models such as SmolLM2 declare ``<|im_start|>`` as EOS; the token that ends an assistant
    turn is ``<|im_end|>``, so that is used as EOS (and ``<|endoftext|>`` as pad) when present.
    """
    _check_local(pretrained)
    path, gguf_file = split_gguf(os.path.expanduser(pretrained))
    kwargs = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        require(("gguf",), "gguf", f"loading {pretrained}")
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    vocab = tokenizer.get_vocab()
    if eos_token is None and tokenizer.eos_token == "<|im_start|>" and "<|im_end|>" in vocab:
        eos_token = "<|im_end|>"
    eos = eos_token or tokenizer.eos_token
    if pad_token is None and tokenizer.pad_token in (None, eos) and "<|endoftext|>" in vocab and eos != "<|endoftext|>":
        pad_token = "<|endoftext|>"  # a pad distinct from EOS keeps response ends unambiguous
    return prepare_tokenizer(tokenizer, eos_token=eos_token, pad_token=pad_token)


def read_checkpoint_tensor(directory: str, name: str) -> Optional[torch.Tensor]:
    """Read one tensor from a ``save_pretrained`` directory (single or sharded safetensors), or None."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            shard = json.load(f)["weight_map"].get(name)
        files = [os.path.join(directory, shard)] if shard else []
    else:
        files = [os.path.join(directory, "model.safetensors")]
    from safetensors import safe_open

    for file in files:
        if os.path.isfile(file):
            with safe_open(file, framework="pt") as f:
                if name in f.keys():
                    return f.get_tensor(name)
    return None
