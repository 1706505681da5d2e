"""Decode steps over a static KV cache, replayed from a CUDA graph on GPUs (``generate(decode=...)``).

generate()'s default loop (``decode="dynamic"``) grows a dynamic KV cache token by token and drops the rows
that have finished. On a GPU, the one-token step of a small or mid-sized model is bound by kernel launches
(hundreds per forward, each a few microseconds of Python and driver time), not by arithmetic. A CUDA graph
records the step's kernels once and replays them all with one launch. A graph fixes shapes and memory
addresses, hence the design:

* the KV cache is ``transformers``' ``StaticCache``, allocated for the whole rollout (prompt + new tokens);
  the prompt still runs once through the dynamic cache (and is repeated for ``num_samples``), then is
  copied in with the public ``Cache.update``;
* the step reads its token, position and (B, P + A) attention mask from buffers written in place;
* a finished row is not removed from the batch: it is fed pad and masked, and its output is ignored.
  Every row is computed until all have finished, the price of fixed shapes.

The graph is captured by hand (``torch.cuda.CUDAGraph``) rather than through ``torch.compile(mode=
"reduce-overhead")``: no compilation (a capture costs about one eager step per call, against seconds to
minutes of Inductor), and no recompilation when the prompt length or batch size changes between rollout
batches, since each call captures its own shapes.

Modes (``DECODE_MODES``): ``dynamic`` (generate()'s loop), ``static`` (this cache, eager steps; runs on the
CPU, which is how the tests check it), ``cuda_graph`` (this cache, the first step eager as the warm-up,
the next ones replayed from a graph captured after it) and ``auto``: ``cuda_graph`` for an unsharded model
on a CUDA device whose family supports a static cache, ``dynamic`` otherwise. A capture that fails under
``auto`` finishes that call with eager steps and makes later ``auto`` calls for that model type dynamic.
On the CPU a static cache does not pay (benchmarks/README.md, "Optimizations"), so ``auto`` never picks it
there. Needs transformers 5 (its ``StaticLayer`` cache layers). Not yet run on a GPU: the tests marked
``gpu`` and benchmarks/gpu_check.sh check it where one is at hand.
"""

import contextlib
import warnings
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import transformers
from transformers import StaticCache

try:
    from transformers.cache_utils import StaticLayer
except ImportError:  # transformers 4.x: static caches without per-layer classes, not supported here
    StaticLayer = None

DECODE_MODES = ("auto", "dynamic", "static", "cuda_graph")
_FAILED_CAPTURES = set()  # model types whose capture failed: ``auto`` decodes them dynamically from then on


def _base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_type(model: nn.Module) -> str:
    """The ``config.model_type`` of a Hugging Face model (or of the one inside a peft model)."""
    base = _base_model(model)
    return getattr(getattr(base, "config", None), "model_type", None) or type(base).__name__


def check_static_cache_support(model: nn.Module) -> None:
    """Raise ValueError, naming the model type, unless ``model`` can decode over a ``StaticCache`` of
    full-attention layers: transformers 5, a family that transformers marks compilable with a static cache
    (``_can_compile_fullgraph``), and no sliding-window, chunked or linear-attention layers."""
    base, name = _base_model(model), model_type(model)
    if StaticLayer is None:
        raise ValueError(f"decode='static'/'cuda_graph' needs transformers >= 5 (installed: "
                         f"{transformers.__version__}); use decode='dynamic'")
    if not getattr(base, "_can_compile_fullgraph", False):
        raise ValueError(f"model type {name!r} ({type(base).__name__}) does not support a static KV cache in "
                         f"transformers {transformers.__version__}; use decode='dynamic'")
    kinds = {type(layer).__name__ for layer in StaticCache(config=base.config, max_cache_len=1).layers}
    if kinds != {StaticLayer.__name__}:
        raise ValueError(f"model type {name!r} has {sorted(kinds)} cache layers: the static decoder handles "
                         "full-attention layers only (no sliding-window, chunked or linear attention); "
                         "use decode='dynamic'")


def _graph_ready(model: nn.Module) -> bool:
    """Whether ``auto`` may capture ``model``'s step: supported, unsharded, no earlier failed capture."""
    try:
        check_static_cache_support(model)
    except ValueError:
        return False
    sharded = any(type(p).__name__ == "DTensor" or hasattr(p, "ds_id") for p in model.parameters())
    return not sharded and model_type(model) not in _FAILED_CAPTURES


def resolve_decode(decode: str, model: nn.Module, device: torch.device, synced: bool) -> str:
    """The decode mode generate() runs: ``decode`` checked against the model and device, ``auto`` resolved.

    Raises ValueError for an unknown mode, ``cuda_graph`` off CUDA or with ``synced`` (a sharded forward
    issues collectives, which a graph cannot replay) and a model without static-cache support."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode={decode!r}: choose one of {', '.join(DECODE_MODES)}")
    if decode == "auto":
        use_graph = device.type == "cuda" and not synced and _graph_ready(model)
        return "cuda_graph" if use_graph else "dynamic"
    if decode == "cuda_graph" and device.type != "cuda":
        raise ValueError(f"decode='cuda_graph' needs the model and prompts on a CUDA device, got {device}; "
                         "decode='static' runs the same static cache without a graph")
    if decode == "cuda_graph" and synced:
        raise ValueError("decode='cuda_graph' cannot run synced generation (sharded parameters): use "
                         "decode='static' or 'dynamic'")
    if decode != "dynamic":
        check_static_cache_support(model)
    return decode


def _warm_up(forward: Callable[[], torch.Tensor], device: torch.device) -> torch.Tensor:
    """Run ``forward`` once on a side stream of ``device``, so that lazy initializations (cuBLAS handles and
    workspaces, kernel selection) happen before a capture, as CUDA graphs require; returns its output."""
    main, side = torch.cuda.current_stream(device), torch.cuda.Stream(device)
    side.wait_stream(main)
    with torch.cuda.device(device), torch.cuda.stream(side):
        logits = forward()
    main.wait_stream(side)
    logits.record_stream(main)  # read on the main stream: the allocator must not hand it out before
    return logits


def _capture(forward: Callable[[], torch.Tensor], device: torch.device) -> Tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Record ``forward``'s kernels in a CUDA graph (nothing runs); returns the graph and its output buffer.

    Autocast's weight-cast cache is turned off inside: casts cached during a capture would live in the
    graph's private memory and be gone when autocast exits."""
    graph = torch.cuda.CUDAGraph()
    autocast = (torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
                if torch.is_autocast_enabled("cuda") else contextlib.nullcontext())
    with torch.cuda.device(device), autocast, torch.cuda.graph(graph, capture_error_mode="thread_local"):
        logits = forward()
    return graph, logits


class StaticDecoder:
    """One-token decode steps of ``model`` for a batch over a ``StaticCache``, replayed from a CUDA graph
    with ``use_graph``. N rows, P prompt positions, A = ``max_new_tokens``.

    Args:
        cache: the prompt's dynamic KV cache from the prefill, (N, heads, P, head dim) per layer.
        attention_mask: (N, P) the prompt's mask.
        next_position: (N, 1) the position of each row's first new token.
        forward_kwargs: extra arguments of every forward (``logits_to_keep``).
        cache_name: the forward's cache argument (``cache`` or ``past_key_values``).
        strict: raise when the capture fails (``decode="cuda_graph"``) instead of going on eagerly.
    """

    def __init__(self, model: nn.Module, cache, attention_mask: torch.Tensor, next_position: Optional[torch.Tensor],
                 max_new_tokens: int, forward_kwargs: dict, cache_name: str, use_graph: bool, strict: bool):
        N, P = attention_mask.shape
        self.model, self.use_graph, self.strict = model, use_graph, strict
        self.cache = StaticCache(config=_base_model(model).config, max_cache_len=P + max_new_tokens)
        for index, layer in enumerate(cache.layers):  # writes positions [0, P) and sets each layer's length to P
            self.cache.update(layer.keys, layer.values, index)
        self.mask = attention_mask.new_zeros(N, P + max_new_tokens)  # (N, P + A) buffer the steps fill in
        self.mask[:, :P] = attention_mask
        self.token = attention_mask.new_zeros(N, 1)  # (N, 1) buffer of the token fed at each step
        self.position = next_position.clone() if next_position is not None else None  # (N, 1) buffer
        self.kwargs = dict(forward_kwargs, **{cache_name: self.cache})
        self.column, self.graph, self.logits = P, None, None

    def _forward(self) -> torch.Tensor:
        """(N, V) float logits of the token in ``self.token``; reads and writes buffers only."""
        positions = {} if self.position is None else {"position_ids": self.position}
        out = self.model(input_ids=self.token, attention_mask=self.mask, use_cache=True, **positions, **self.kwargs)
        return out.logits[:, -1].float()

    def _warm_up_and_capture(self) -> torch.Tensor:
        """The first step eagerly, as the warm-up, then the capture of the next steps; with a failed capture
        the steps stay eager (``strict``: raise)."""
        logits = _warm_up(self._forward, self.token.device)
        try:
            self.graph, self.logits = _capture(self._forward, self.token.device)
        except RuntimeError as error:
            self.use_graph = False
            name = model_type(self.model)
            _FAILED_CAPTURES.add(name)
            if self.strict:
                raise RuntimeError(f"CUDA graph capture of the {name!r} decode step failed: {error}; use "
                                   "decode='static' or 'dynamic'") from error
            warnings.warn(f"CUDA graph capture of the {name!r} decode step failed ({error}); decoding eagerly, "
                          "and dynamically from now on")
        return logits

    def step(self, token: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
        """Feed (N,) ``token`` at the next position; ``running`` (N,) is 1 for rows that have not finished
        (0 masks a finished row's pad). Returns (N, V) float logits, valid until the next step."""
        self.token.copy_(token.unsqueeze(1))
        self.mask[:, self.column] = running
        if self.graph is not None:
            self.graph.replay()
            logits = self.logits
        elif self.use_graph:
            logits = self._warm_up_and_capture()
        else:
            logits = self._forward()
        if self.position is not None:
            self.position += 1  # in place: the graph reads this buffer
        self.column += 1
        return logits
