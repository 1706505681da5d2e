"""``DeepSpeedStrategy``'s options and the DeepSpeed configs they generate: one per trained engine (each may have
its own ZeRO stage, as DeepSpeed-Chat's actor and critic do) and one for frozen models (inference engines)."""

import copy
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

MIN_VERSION = "0.19.4"  # first release with "managed_gradient_accumulation": false
ZERO_STAGES = (1, 2, 3)


def import_deepspeed():
    """``import deepspeed``, or an ImportError that says how to get a version this strategy supports."""
    if not torch.cuda.is_available():
        # DeepSpeed picks its accelerator once, at first use; say "cpu" instead of letting it guess.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
        from deepspeed.runtime.engine import DeepSpeedEngine
    except ImportError as e:
        raise ImportError(f"DeepSpeedStrategy needs deepspeed>={MIN_VERSION}: pip install -e .[deepspeed] "
                          f"({e})") from e
    if not hasattr(DeepSpeedEngine, "managed_gradient_accumulation"):
        raise ImportError(f"DeepSpeedStrategy needs deepspeed>={MIN_VERSION} (found {deepspeed.__version__}): "
                          "older releases cannot leave the accumulation boundary to the caller")
    return deepspeed


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


@dataclass
class DeepSpeedOptions:
    """Knobs of ``DeepSpeedStrategy``.

    Attributes:
        stage: ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also parameters. A
            ``zero_optimization.stage`` in ``config`` takes its place.
        offload: keep optimizer state (and with stage 3 the parameters) in CPU memory.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` for the working copy; master weights stay fp32.
        backend: process-group backend; default NCCL on GPUs, gloo on the CPU.
        timeout_s: how long a collective waits for the other ranks before failing.
        zero_init: with stage 3, partition Hugging Face models while they are built in
            ``model_init_context`` (no rank ever holds a whole model). ``False`` builds them whole and
            partitions them in ``prepare``, which lets ``copy.deepcopy`` make the reference model.
        config: DeepSpeed config entries merged over the generated ones (e.g.
            ``{"zero_optimization": {"stage3_param_persistence_threshold": 0}}``).
        pair_stages: the ZeRO stage of each ``(model, optimizer)`` pair of a ``prepare`` call, in order; pairs
            past its end (or given None) get ``stage``. ``(3, 1)`` makes PPO's actor ZeRO-3 and its critic
            ZeRO-1 (DeepSpeed-Chat's ``--actor_zero_stage`` / ``--critic_zero_stage``).
        offload_frozen: frozen models (reference, reward) become ZeRO-3 inference engines whose parameters live
            in CPU memory and are fetched layer by layer for each forward (DeepSpeed-Chat's
            ``--offload_reference_model``); otherwise they are ZeRO-3 engines under stage 3 and plain modules
            on the device under stages 1-2.
    """

    stage: int = 2
    offload: bool = False
    precision: str = "fp32"
    backend: Optional[str] = None
    timeout_s: float = 1800.0
    zero_init: bool = True
    config: Dict = field(default_factory=dict)
    pair_stages: Tuple[Optional[int], ...] = ()
    offload_frozen: bool = False

    def __post_init__(self):
        self.stage = self.config.get("zero_optimization", {}).get("stage", self.stage)
        self.pair_stages = tuple(self.pair_stages)
        for stage in (self.stage, *self.pair_stages):
            if stage is not None and stage not in ZERO_STAGES:
                raise ValueError(f"unsupported DeepSpeed ZeRO stage {stage!r}; choose from 1, 2, 3")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"unsupported DeepSpeed precision {self.precision!r}")

    def stages(self) -> Tuple[int, ...]:
        """Every ZeRO stage a model of this strategy may get."""
        return (self.stage,) + tuple(s for s in self.pair_stages if s is not None)

    def pair_stage(self, index: int) -> int:
        """The ZeRO stage of the ``index``-th (model, optimizer) pair of a ``prepare`` call."""
        stage = self.pair_stages[index] if index < len(self.pair_stages) else None
        return self.stage if stage is None else stage

    def frozen_stage(self) -> Optional[int]:
        """3 when frozen models become ZeRO-3 inference engines, None when they stay plain modules."""
        return 3 if self.stage == 3 or self.offload_frozen else None

    def ds_config(self, train: bool, stage: Optional[int] = None) -> dict:
        """The DeepSpeed config of a trained (``train``) or frozen engine of ZeRO ``stage`` (default: ``stage``):
        batch sizes are placeholders (data loading and the accumulation boundary stay with the trainer:
        ``managed_gradient_accumulation`` is off, so ``step`` is the boundary)."""
        stage = self.stage if stage is None else stage
        zero = {"stage": stage}
        pin = torch.cuda.is_available()
        if self.offload and train:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
        if stage == 3 and (self.offload if train else self.offload or self.offload_frozen):
            zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
        config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
                  "zero_optimization": zero, "bf16": {"enabled": self.precision == "bf16"},
                  "fp16": {"enabled": self.precision == "fp16"}, "steps_per_print": 2 ** 62,
                  # Any torch optimizer works (DeepSpeedCPUAdam is faster with offload but needs a compiler).
                  "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False}
        if train:
            config["managed_gradient_accumulation"] = False
        merged = _merge(config, self.config)
        merged["zero_optimization"]["stage"] = stage  # the engine's own stage wins over the file's
        return merged
