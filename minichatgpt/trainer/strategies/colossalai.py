"""ColossalAI Booster: ZeRO-1/2 (``LowLevelZeroPlugin``) or Gemini ZeRO-3 (``GeminiPlugin``). CUDA only.

ColossalAI pins torch<=2.5.1 and transformers==4.51.3, so it lives in its own environment (see
docs/distributed.md); nothing here is imported until a ``ColossalAIStrategy`` is built.
"""

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset

from .base import Strategy
from .utils import check_sharded_save, distributed_dataloader, fill_grad_norm, load_state_dict, prepare_models, \
    save_state_dict, set_seed, should_write

INSTALL_HINT = ("ColossalAIStrategy needs colossalai and a CUDA device. Install it into a separate environment "
                "(colossalai pins torch<=2.5.1 and transformers==4.51.3): python -m venv .venv-colossalai && "
                ". .venv-colossalai/bin/activate && pip install 'torch<=2.5.1' 'transformers==4.51.3' && "
                "pip install -e .[colossalai]")

# Seed-API keyword arguments whose GeminiPlugin / LowLevelZeroPlugin names changed.
_RENAMED = {"search_range_mb": "search_range_m", "min_chunk_size_mb": "min_chunk_size_m"}
# Seed-API keyword arguments that only one kind of plugin takes; the seed API ignored them for the other.
_GEMINI_ONLY = {"pin_memory", "force_outputs_fp32", "search_range_m", "hidden_dim", "min_chunk_size_m",
                "gpu_margin_mem_ratio"}
_ZERO_ONLY = {"reduce_bucket_size_in_m", "overlap_communication"}


def import_colossalai():
    """``import colossalai`` after checking for CUDA, or an error saying how to set it up."""
    if not torch.cuda.is_available():
        raise RuntimeError(f"no CUDA device is visible. {INSTALL_HINT}")
    try:
        import colossalai
        from colossalai.booster import Booster  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    return colossalai


@dataclass
class ColossalAIOptions:
    """Knobs of ``ColossalAIStrategy``.

    Attributes:
        stage: 1 or 2: ``LowLevelZeroPlugin``; 3: ``GeminiPlugin`` (chunked ZeRO-3).
        placement_policy: ``"cuda"`` keeps everything on the GPU; ``"cpu"`` offloads optimizer state (and
            with Gemini the parameters) to CPU memory.
        precision: ``"fp16"``, ``"bf16"`` (or ``"fp32"`` for stages 1-2).
        max_norm: gradient clipping, fixed when the plugin is built (ColossalAI clips inside its step).
        plugin_kwargs: other keyword arguments of the plugin (``initial_scale``, ``gpu_margin_mem_ratio``...).
    """

    stage: int = 3
    placement_policy: str = "cuda"
    precision: str = "fp16"
    max_norm: float = 1.0
    plugin_kwargs: Dict = field(default_factory=dict)

    def check_precision(self) -> None:
        """Gemini (stage 3) computes in fp16 or bf16 only; LowLevelZero also in fp32."""
        allowed = ("fp16", "bf16") if self.stage == 3 else ("fp32", "fp16", "bf16")
        if self.precision not in allowed:
            raise ValueError(f"ColossalAI stage {self.stage} supports precision {' or '.join(allowed)}, not "
                             f"{self.precision!r}" + (" (use --precision bf16 or fp16 with colossalai_gemini)"
                                                      if self.stage == 3 else ""))

    def build_plugin(self):
        if self.stage not in (1, 2, 3) or self.placement_policy not in ("cuda", "cpu"):
            raise ValueError(f"unsupported ColossalAI stage {self.stage} / placement {self.placement_policy!r}")
        kwargs = {_RENAMED.get(k, k): v for k, v in self.plugin_kwargs.items()}
        if "reduce_bucket_size" in kwargs:  # the seed API gave bytes
            kwargs["reduce_bucket_size_in_m"] = kwargs.pop("reduce_bucket_size") // 1024 ** 2
        kwargs.pop("shard_init", None)  # Gemini always shards at boost time
        offload = self.placement_policy == "cpu"
        ignored = _GEMINI_ONLY if self.stage < 3 else _ZERO_ONLY
        kwargs = {k: v for k, v in kwargs.items() if k not in ignored}
        if self.stage < 3:
            from colossalai.booster.plugin import LowLevelZeroPlugin

            return LowLevelZeroPlugin(stage=self.stage, precision=self.precision, max_norm=self.max_norm,
                                      cpu_offload=offload, **kwargs)
        from colossalai.booster.plugin import GeminiPlugin

        fraction = 1.0 if offload else 0.0
        return GeminiPlugin(placement_policy="static", offload_optim_frac=fraction, offload_param_frac=fraction,
                            precision=self.precision, max_norm=self.max_norm, enable_gradient_accumulation=True,
                            **kwargs)


def _hybrid_adam(optim: Optimizer) -> Optimizer:
    """Gemini accepts only ColossalAI's Adam kernels: rebuild an Adam/AdamW as ``HybridAdam``."""
    from colossalai.nn.optimizer import HybridAdam

    if type(optim).__name__ in ("HybridAdam", "CPUAdam", "FusedAdam"):
        return optim
    if not isinstance(optim, (torch.optim.Adam, torch.optim.AdamW)):
        raise ValueError(f"ColossalAI Gemini trains with Adam/AdamW only, got {type(optim).__name__}")
    groups = [{k: v for k, v in g.items() if k in ("params", "lr", "betas", "eps", "weight_decay")}
              for g in optim.param_groups]
    return HybridAdam(groups, adamw_mode=isinstance(optim, torch.optim.AdamW))


class ColossalAIStrategy(Strategy):
    """ColossalAI ZeRO through ``Booster``; the seed API's constructor still works.

    Args:
        stage: 1 or 2 (LowLevelZero), 3 (Gemini).
        precision: ``"fp16"`` or ``"bf16"`` (``"fp32"`` for stages 1-2).
        seed: seeds every rank alike.
        placement_policy: ``"cuda"`` or ``"cpu"`` (offload).
        max_norm: gradient clipping norm (ColossalAI fixes it when the plugin is built).
        **plugin_kwargs: passed to the plugin (seed-API names such as ``search_range_mb`` are mapped).
    """

    shards_optimizer = True
    gathers_for_generation = False
    clips_in_step = True

    @property
    def shards_parameters(self) -> bool:
        return self.options.stage == 3  # Gemini

    def __init__(self, stage: int = 3, precision: str = "fp16", seed: int = 42, placement_policy: str = "cuda",
                 max_norm: float = 1.0, **plugin_kwargs):
        self.options = ColossalAIOptions(stage=stage, placement_policy=placement_policy, precision=precision,
                                         max_norm=max_norm, plugin_kwargs=plugin_kwargs)
        self.options.check_precision()  # before looking for CUDA: a bad value is reported on any machine
        self.seed = seed
        self._pending_norms = {}  # id(optimizer) -> tensor returned by clip_grad_norm
        self.setup_distributed()
        from colossalai.booster import Booster

        self.booster = Booster(plugin=self.options.build_plugin())

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device())

    @property
    def precision(self) -> str:
        return self.options.precision

    def setup_distributed(self) -> None:
        colossalai = import_colossalai()
        if not torch.distributed.is_initialized():
            colossalai.launch_from_torch(seed=self.seed)  # reads torchrun's variables, sets the CUDA device
        set_seed(self.seed)

    def model_init_context(self):
        return nullcontext()

    def prepare(self, *models):
        def boost(model: nn.Module, optim: Optimizer):
            if self.options.stage == 3:
                optim = _hybrid_adam(optim)
            model, optim, *_ = self.booster.boost(model, optim)
            return model, optim

        return prepare_models(models, boost, lambda model: model.to(self.device))

    def backward(self, loss: torch.Tensor, model: nn.Module, optimizer: Optimizer) -> None:
        self.booster.backward(loss, optimizer)

    def clip_grad_norm(self, model: nn.Module, optimizer: Optimizer, max_norm: float) -> torch.Tensor:
        """Checks ``max_norm`` against the plugin's; the returned 0-d tensor is filled in with the norm that
        ColossalAI measures inside ``optimizer_step``."""
        if max_norm != self.options.max_norm:
            raise ValueError(f"ColossalAI clips inside its step at the norm given when the plugin was built "
                             f"({self.options.max_norm}); build ColossalAIStrategy(max_norm={max_norm})")
        norm = torch.full((), float("nan"))
        self._pending_norms[id(optimizer)] = norm
        return norm

    def optimizer_step(self, optimizer: Optimizer, model: nn.Module) -> None:
        optimizer.step()
        optimizer.zero_grad()
        norm = self._pending_norms.pop(id(optimizer), None)
        if norm is not None:
            fill_grad_norm(norm, optimizer.get_grad_norm())

    def zero_grad(self, optimizer: Optimizer, model: nn.Module) -> None:
        optimizer.zero_grad()
        self._pending_norms.pop(id(optimizer), None)

    def setup_dataloader(self, dataset: Dataset, batch_size: int, shuffle: bool = True,
                         collate_fn: Optional[Callable] = None, drop_last: bool = False,
                         pin_memory: bool = False, seed: int = 42) -> DataLoader:
        return distributed_dataloader(dataset, batch_size, shuffle, collate_fn, drop_last, pin_memory, seed)

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        return model.unwrap() if hasattr(model, "unwrap") else model

    def gathered_params(self, model: nn.Module):
        # LowLevelZero keeps full working weights on every rank; Gemini gathers chunks in its own hooks,
        # which every rank runs the same number of times (gathers_for_generation = False makes the
        # trainer generate in lockstep).
        return nullcontext()

    def save_model(self, model: nn.Module, path: str, only_rank0: bool = True) -> None:
        state = model.state_dict()  # Gemini gathers its chunks (a collective); LowLevelZero is replicated
        if should_write(only_rank0) and state:
            save_state_dict(state, path)
        self.barrier()

    def load_model(self, model: nn.Module, path: str, strict: bool = True) -> None:
        load_state_dict(path)  # refuses a file that is not plain tensors before the booster unpickles it
        self.booster.load_model(model, path, strict=strict)

    def save_optimizer(self, optimizer: Optimizer, path: str, only_rank0: bool = False) -> None:
        """Writes ColossalAI's sharded optimizer checkpoint, a directory at ``path`` that every rank fills."""
        check_sharded_save(only_rank0, type(self).__name__)
        self.booster.save_optimizer(optimizer, path, shard=True)

    def load_optimizer(self, optimizer: Optimizer, path: str) -> None:
        self.booster.load_optimizer(optimizer, path)
