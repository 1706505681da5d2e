"""Compute backends behind one interface; ``build_strategy(name)`` is what scripts and tests use."""

from .base import Strategy
from .naive import NaiveStrategy

STRATEGY_NAMES = ("naive",)


def build_strategy(name: str, **kwargs) -> Strategy:
    """Build a strategy from its command-line name (``naive``, ``ddp``, ``fsdp``, ``deepspeed_zero2``...)."""
    if name == "naive":
        return NaiveStrategy(**kwargs)
    raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGY_NAMES)}")


__all__ = ["Strategy", "NaiveStrategy", "build_strategy", "STRATEGY_NAMES"]
