"""DeepSpeed ZeRO stages 1-3, optionally offloading to the CPU; runs on the CPU with ``DS_ACCELERATOR=cpu``."""

from contextlib import contextmanager, nullcontext
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset

from .base import Strategy
from .deepspeed_options import MIN_VERSION, DeepSpeedOptions, import_deepspeed  # noqa: F401  (public here too)
from .offload import shares_trained_parameters
from .precision import as_dtype
from .utils import (check_sharded_save, default_device, distributed_dataloader, fill_grad_norm, join_process_group,
                    load_object, load_state_dict, prepare_models, rank_path, save_object, save_state_dict, set_seed,
                    should_write)

class DeepSpeedStrategy(Strategy):
    """DeepSpeed ZeRO: ``prepare`` turns each (model, optimizer) pair into (engine, optimizer).

    The optimizer in the pair is the user's object, now updated by the engine (learning-rate schedulers
    keep working on its ``param_groups``). With stage 3 models are built partitioned inside
    ``model_init_context`` (``deepspeed.zero.Init``) and frozen models become inference engines. Each pair
    may have its own stage (``pair_stages``), and frozen models may be ZeRO-3-offloaded (``offload_frozen``).

    Args:
        stage: ZeRO stage 1, 2 or 3.
        offload: offload optimizer state (and stage-3 parameters) to the CPU.
        seed: seeds every rank alike.
        **options: the other fields of ``DeepSpeedOptions``.
    """

    shards_optimizer = True
    clips_in_step = True

    @property
    def shards_parameters(self) -> bool:
        """True when some trained model may be ZeRO-3 (checkpoints gather then, ranks generate in step)."""
        return 3 in self.options.stages()

    def __init__(self, stage: int = 2, offload: bool = False, seed: int = 42, **options):
        self.options = DeepSpeedOptions(stage=stage, offload=offload, **options)
        self.seed = seed
        self._device = default_device()
        self._engines = {}  # id(optimizer) -> engine
        self._pending_norms = {}  # id(engine) -> tensor returned by clip_grad_norm, filled by the step
        self.setup_distributed()

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def precision(self) -> str:
        return self.options.precision

    def setup_distributed(self) -> None:
        deepspeed = import_deepspeed()
        backend = join_process_group(self._device, self.options.backend, self.options.timeout_s)
        deepspeed.init_distributed(dist_backend=backend)
        set_seed(self.seed)

    @contextmanager
    def model_init_context(self):
        """With stage 3, Hugging Face models built inside are partitioned as they are created (and
        ``from_pretrained`` loads into the partitions); other modules are partitioned by ``prepare``.
        Only when every model will be a plain ZeRO-3 engine: a model built partitioned cannot become a
        stage 1-2 engine or an offloaded one, so mixed stages and ``offload_frozen`` build models whole."""
        opts = self.options
        if set(opts.stages()) != {3} or opts.offload_frozen or not opts.zero_init:
            yield
            return
        from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

        # transformers runs deepspeed.zero.Init (and ZeRO-3 aware weight init and loading) while this lives.
        hf_config = HfDeepSpeedConfig(opts.ds_config(train=True))
        try:
            yield
        finally:
            del hf_config
            unset_hf_deepspeed_config()

    def prepare(self, *models):
        deepspeed, opts = import_deepspeed(), self.options
        dtype, pairs = as_dtype(opts.precision), iter(range(len(models)))
        frozen_stage = opts.frozen_stage()

        def wrap_trained(model: nn.Module, optim: Optimizer):
            stage = opts.pair_stage(next(pairs))
            if stage == 3:
                check_partitionable(model, dtype)
            engine, *_ = deepspeed.initialize(model=model, optimizer=optim, config=opts.ds_config(True, stage),
                                              dist_init_required=False)
            self._engines[id(optim)] = engine
            return engine, optim

        def wrap_frozen(model: nn.Module):
            if frozen_stage is None or (opts.stage != 3 and shares_trained_parameters(model, models)):
                # Frozen models need no master copy: keep them in the working dtype the engines compute in.
                return model.to(self.device, dtype)
            check_partitionable(model, dtype)
            engine, *_ = deepspeed.initialize(model=model, config=opts.ds_config(False, frozen_stage),
                                              dist_init_required=False)
            return engine

        return prepare_models(models, wrap_trained, wrap_frozen)

    def _engine(self, optimizer: Optimizer):
        if id(optimizer) not in self._engines:
            raise ValueError("this optimizer did not go through DeepSpeedStrategy.prepare")
        return self._engines[id(optimizer)]

    def backward(self, loss: torch.Tensor, model: nn.Module, optimizer: Optimizer) -> None:
        self._engine(optimizer).backward(loss)

    def clip_grad_norm(self, model: nn.Module, optimizer: Optimizer, max_norm: float) -> torch.Tensor:
        """DeepSpeed clips (and measures the norm) inside its step: the returned 0-d tensor is filled in with
        the pre-clipping norm by ``optimizer_step``, before any caller reads it as a number."""
        engine = self._engine(optimizer)
        engine.optimizer.clip_grad = max_norm
        norm = torch.full((), float("nan"))
        self._pending_norms[id(engine)] = norm
        return norm

    def optimizer_step(self, optimizer: Optimizer, model: nn.Module) -> None:
        engine = self._engine(optimizer)
        engine.step()  # applies, then zeroes the gradients
        norm = self._pending_norms.pop(id(engine), None)
        if norm is not None:
            fill_grad_norm(norm, engine.get_global_grad_norm())
        engine.optimizer.clip_grad = 0.0  # clip only steps that asked for it

    def zero_grad(self, optimizer: Optimizer, model: nn.Module) -> None:
        engine = self._engine(optimizer)
        engine.optimizer.zero_grad(set_to_none=True)
        self._pending_norms.pop(id(engine), None)

    def setup_dataloader(self, dataset: Dataset, batch_size: int, shuffle: bool = True,
                         collate_fn: Optional[Callable] = None, drop_last: bool = False,
                         pin_memory: bool = False, seed: int = 42) -> DataLoader:
        return distributed_dataloader(dataset, batch_size, shuffle, collate_fn, drop_last, pin_memory, seed)

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        return getattr(model, "module", model)

    @contextmanager
    def gathered_params(self, model: nn.Module):
        if not _is_zero3_engine(model):
            yield
            return
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

        # Gathers every parameter once and removes the per-module fetch/release hooks, so forwards inside
        # need no collectives and ranks may generate different numbers of tokens.
        with unwrap_model_for_generation(model):
            yield

    def full_state_dict(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        trained = any(engine is model for engine in self._engines.values())
        return full_state_dict(self.unwrap_model(model), from_master=trained)

    def save_model(self, model: nn.Module, path: str, only_rank0: bool = True) -> None:
        state = self.full_state_dict(model)
        if should_write(only_rank0):
            save_state_dict(state, path)
        self.barrier()

    def load_model(self, model: nn.Module, path: str, strict: bool = True) -> None:
        module = self.unwrap_model(model)
        state = load_state_dict(path)
        with import_deepspeed().zero.GatheredParameters(list(module.parameters()), modifier_rank=0):
            module.load_state_dict(state, strict=strict)
        optimizer = getattr(model, "optimizer", None)
        if hasattr(optimizer, "refresh_fp32_params"):
            optimizer.refresh_fp32_params()  # the fp32 master copy would otherwise overwrite the load

    def save_optimizer(self, optimizer: Optimizer, path: str, only_rank0: bool = False) -> None:
        check_sharded_save(only_rank0, type(self).__name__)
        save_object(self._engine(optimizer).optimizer.state_dict(), rank_path(path, self.rank))
        self.barrier()

    def load_optimizer(self, optimizer: Optimizer, path: str) -> None:
        zero_optimizer = self._engine(optimizer).optimizer
        state = load_object(rank_path(path, self.rank), safe_globals=_checkpoint_classes())
        states = [None] * self.world_size
        states[self.rank] = state  # each rank reads only its own partition
        zero_optimizer.load_state_dict(states, load_from_fp32_weights=True)


def full_state_dict(module: nn.Module, from_master: bool) -> Dict[str, torch.Tensor]:
    """The whole float32 state dict of an engine's module, on every rank (collective under ZeRO-3).

    ``from_master``: the module is trained by a ZeRO optimizer, whose fp32 master copy is the exact value.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    with import_deepspeed().zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    # The working copy may be bf16/fp16: take trained parameters from the fp32 master (also collective).
    for name, param in module.named_parameters(remove_duplicate=False):
        master = safe_get_full_fp32_param(param) if from_master and param.requires_grad and name in state else None
        if master is not None:
            state[name] = master.detach().cpu().reshape(state[name].shape)
    return state


def _is_zero3_engine(model: nn.Module) -> bool:
    return callable(getattr(model, "zero_optimization_partition_weights", None)) and \
        bool(model.zero_optimization_partition_weights())


def check_partitionable(module: nn.Module, dtype: torch.dtype) -> None:
    """Before a module becomes a ZeRO-3 engine. ``copy.deepcopy`` of a ZeRO-3 partitioned model copies only the
    empty local placeholders (the copy has no partitions behind them): refuse it with a clear message instead of
    failing in the first forward. Parameters made outside ``zero.Init`` (a value head) get the working
    ``dtype``: ZeRO-3 flattens one dtype."""
    for name, param in module.named_parameters():
        if param.numel() == 0 and not hasattr(param, "ds_id"):
            raise ValueError(f"parameter {name!r} is empty: with ZeRO-3, models built inside "
                             "model_init_context are partitioned and copy.deepcopy cannot copy them; build the "
                             "reference / reward model with its constructor (e.g. Actor(pretrained=...)), or "
                             "pass zero_init=False to build whole models and partition them in prepare")
        if not hasattr(param, "ds_id"):
            param.data = param.data.to(dtype)


def _checkpoint_classes():
    """Classes a ZeRO optimizer state dict holds besides tensors (for ``weights_only`` loading)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
