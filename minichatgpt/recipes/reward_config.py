"""The reward-function flags shared by ``minichatgpt ppo`` and ``minichatgpt grpo`` (see
``docs/reward_functions.md``), and their up-front check."""

import dataclasses
import math
from typing import List

from ..config import NON_NEGATIVE_INT, POSITIVE, UsageError, option
from ..experience.reward_functions import RewardFunctionError, RewardFunctions, load_reward_function


@dataclasses.dataclass
class RewardFunctionFields:
    reward_fn: List[str] = option(help="reward function path/to/file.py:name or package.module:name (repeatable; "
                                       "the built-in task: minichatgpt.demo:hidden_rule_reward)", default_factory=list)
    reward_weights: List[float] = option(help="one weight per --reward_fn (default: all 1)", default_factory=list)
    reward_workers: int = option(0, "worker processes for reward functions (0: in the training process, no timeout)",
                                 rule=NON_NEGATIVE_INT)
    reward_timeout: float = option(60.0, "seconds one reward-function call may take with --reward_workers",
                                   rule=POSITIVE)


def check_reward_functions(config: RewardFunctionFields) -> None:
    """Weights match the functions, and every function can be loaded (a bad name fails before training)."""
    if config.reward_weights and len(config.reward_weights) != len(config.reward_fn):
        raise UsageError(f"--reward_weights has {len(config.reward_weights)} values for {len(config.reward_fn)} "
                         "--reward_fn functions")
    if any(not math.isfinite(w) for w in config.reward_weights):
        raise UsageError(f"--reward_weights must be finite numbers, got {config.reward_weights}")
    for spec in config.reward_fn:
        try:
            load_reward_function(spec)
        except RewardFunctionError as e:
            raise UsageError(f"--reward_fn: {e}") from None


def build_reward_functions(config: RewardFunctionFields):
    """The configured ``RewardFunctions`` (None without ``--reward_fn``); close it when done."""
    if not config.reward_fn:
        return None
    return RewardFunctions(config.reward_fn, config.reward_weights, config.reward_workers, config.reward_timeout)
