"""Compute backends behind one interface; ``build_strategy(name)`` is what scripts and tests use.

Optional engines (deepspeed, colossalai) are imported only when their strategy is built, so every class
here imports without them.
"""

from functools import partial
from typing import Callable, Dict, Optional

from .base import Strategy
from .colossalai import ColossalAIStrategy
from .ddp import DDPStrategy
from .deepspeed import DeepSpeedStrategy
from .fsdp import FSDPStrategy
from .naive import NaiveStrategy
from .precision import PRECISIONS

_BUILDERS: Dict[str, Callable[..., Strategy]] = {
    "naive": NaiveStrategy,
    "ddp": DDPStrategy,
    "fsdp": FSDPStrategy,
    **{f"deepspeed_zero{stage}{suffix}": partial(DeepSpeedStrategy, stage=stage, offload=bool(suffix))
       for stage in (1, 2, 3) for suffix in ("", "_offload")},
    "colossalai_zero2": partial(ColossalAIStrategy, stage=2, placement_policy="cuda"),
    "colossalai_zero2_cpu": partial(ColossalAIStrategy, stage=2, placement_policy="cpu"),
    "colossalai_gemini": partial(ColossalAIStrategy, stage=3, placement_policy="cuda"),
    "colossalai_gemini_cpu": partial(ColossalAIStrategy, stage=3, placement_policy="cpu"),
}

STRATEGY_NAMES = tuple(_BUILDERS)


def build_strategy(name: str, precision: Optional[str] = None, **kwargs) -> Strategy:
    """Build a strategy from its command-line name (``naive``, ``ddp``, ``fsdp``, ``deepspeed_zero2``...).

    Args:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``, in each backend's convention (autocast over float32
            masters for naive/DDP, FSDP2's ``MixedPrecisionPolicy``, DeepSpeed's bf16/fp16 blocks, ColossalAI's
            precision); None keeps the backend's default (fp32; fp16 for ColossalAI).
        **kwargs: go to the class (e.g. ``build_strategy("fsdp", cpu_offload=True)``).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGY_NAMES)}")
    if precision is not None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        kwargs["precision"] = precision
    return _BUILDERS[name](**kwargs)


__all__ = ["Strategy", "NaiveStrategy", "DDPStrategy", "FSDPStrategy", "DeepSpeedStrategy", "ColossalAIStrategy",
           "build_strategy", "STRATEGY_NAMES", "PRECISIONS"]
