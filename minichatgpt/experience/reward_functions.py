"""Rewards computed by code ("verifiable rewards"): a math answer checker, a format rule, a unit test.

A reward function is any callable ``fn(prompts: list[str], responses: list[str], **columns) ->
list[float]``; ``columns`` are the prompt dataset's other fields, one list per field (a reference
``answer``, say). It is named by ``path/to/file.py:name`` or ``package.module:name``. Several are
combined with weights. Every result is checked: a function that raises, returns a wrong number of
rewards or a non-finite one is a :class:`RewardFunctionError` naming the function and the sample.

With ``workers > 0`` calls run in worker processes (:mod:`.workers`), each call limited to ``timeout``
seconds; a call that hangs, or whose worker dies, is reported and the workers killed (a thread could not
be), instead of being waited on forever.
"""

import importlib
import importlib.util
import math
import os
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .workers import WorkerDied, WorkerPool, WorkerTimeout

RewardFn = Callable[..., List[float]]
Columns = Dict[str, list]
_LOADED: Dict[str, RewardFn] = {}  # spec -> function, per process (workers load each spec once)


class RewardFunctionError(RuntimeError):
    """A reward function failed: raised, hung, or returned a wrong length or a non-finite value."""


def load_reward_function(spec: str) -> RewardFn:
    """The function named by ``path/to/file.py:name`` or ``package.module:name``."""
    if spec in _LOADED:
        return _LOADED[spec]
    module_name, sep, name = spec.rpartition(":")
    if not sep or not module_name or not name:
        raise RewardFunctionError(f"reward function {spec!r}: expected 'path/to/file.py:name' or "
                                  "'package.module:name'")
    if module_name.endswith(".py"):
        path = os.path.expanduser(module_name)
        if not os.path.isfile(path):
            raise RewardFunctionError(f"reward function {spec!r}: file {path!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"_reward_{len(_LOADED)}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise RewardFunctionError(f"reward function {spec!r}: cannot import {module_name!r}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardFunctionError(f"reward function {spec!r}: {module_name!r} has no function {name!r}")
    _LOADED[spec] = fn
    return fn


def _sample(prompts: Sequence[str], responses: Sequence[str], index: int, offset: int) -> str:
    """Sample ``index`` of a chunk that starts at ``offset`` of the batch, with its texts."""
    return f"sample {offset + index} (prompt {prompts[index]!r}, response {responses[index]!r})"


def check_rewards(spec: str, values, prompts: Sequence[str], responses: Sequence[str], offset: int = 0) -> List[float]:
    """``values`` as floats, or a RewardFunctionError naming ``spec`` and the offending sample."""
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError) as e:
        raise RewardFunctionError(f"reward function {spec} must return a list of numbers: {e}") from e
    if len(values) != len(responses):
        raise RewardFunctionError(f"reward function {spec} returned {len(values)} rewards for "
                                  f"{len(responses)} samples (starting at sample {offset})")
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise RewardFunctionError(f"reward function {spec} returned {v} for "
                                      f"{_sample(prompts, responses, i, offset)}")
    return values


def call_reward_function(spec: str, prompts: List[str], responses: List[str], columns: Columns,
                         offset: int = 0) -> List[float]:
    """Call ``spec`` on one chunk of samples and check the result; an exception names the first sample
    that raises on its own (found by calling the function on each sample)."""
    fn = load_reward_function(spec)
    try:
        values = fn(prompts, responses, **columns)
    except Exception as e:
        culprit = "the batch"
        for i in range(len(prompts)):
            try:
                fn(prompts[i:i + 1], responses[i:i + 1], **{k: v[i:i + 1] for k, v in columns.items()})
            except Exception:
                culprit = _sample(prompts, responses, i, offset)
                break
        raise RewardFunctionError(f"reward function {spec} raised {type(e).__name__}: {e} on {culprit}") from None
    return check_rewards(spec, values, prompts, responses, offset)


class RewardFunctions:
    """Weighted sum of reward functions: ``scores = sum_k w_k fn_k(prompts, responses, **columns)``.

    Args:
        specs: ``path/file.py:name`` or ``package.module:name`` of each function.
        weights: one per function (default: all 1).
        workers: processes to run calls in (0: in this process, no timeout).
        timeout: seconds one call (one function on one chunk of samples) may take, with ``workers > 0``.
    """

    def __init__(self, specs: Sequence[str], weights: Optional[Sequence[float]] = None, workers: int = 0,
                 timeout: float = 60.0):
        self._pool: Optional[WorkerPool] = None
        self.specs = list(specs)
        self.weights = [1.0] * len(self.specs) if not weights else [float(w) for w in weights]
        if len(self.weights) != len(self.specs):
            raise ValueError(f"{len(self.weights)} reward weights for {len(self.specs)} reward functions")
        for spec in self.specs:
            load_reward_function(spec)  # a bad name fails now, not after the first rollout
        self.workers, self.timeout = workers, timeout

    def __call__(self, prompts: List[str], responses: List[str], columns: Optional[Columns] = None) -> torch.Tensor:
        """(B,) float32 combined rewards."""
        columns = columns or {}
        total = torch.zeros(len(responses))
        for spec, weight in zip(self.specs, self.weights):
            values = self._run(spec, prompts, responses, columns)
            total += weight * torch.tensor(values, dtype=torch.float32)
        return total

    def _run(self, spec: str, prompts: List[str], responses: List[str], columns: Columns) -> List[float]:
        if self.workers == 0:
            return call_reward_function(spec, prompts, responses, columns)
        if self._pool is None:
            self._pool = WorkerPool(self.workers, call_reward_function)
        size = math.ceil(len(prompts) / self.workers)
        starts = range(0, len(prompts), size)
        calls = [(spec, prompts[start:start + size], responses[start:start + size],
                  {k: v[start:start + size] for k, v in columns.items()}, start) for start in starts]
        try:
            chunks = self._pool.map(calls, self.timeout)  # the workers are killed on a timeout or a death
        except (WorkerTimeout, WorkerDied) as e:
            samples = f"samples {starts[e.index]}..{min(starts[e.index] + size, len(prompts)) - 1}"
            if isinstance(e, WorkerTimeout):
                raise RewardFunctionError(f"reward function {spec} did not return within --reward_timeout "
                                          f"{self.timeout} s on {samples}") from None
            raise RewardFunctionError(f"reward function {spec}: its worker process exited with code "
                                      f"{e.exitcode} on {samples}") from None
        return [value for chunk in chunks for value in chunk]

    def close(self) -> None:
        """End the worker processes (killing any that do not exit at once); never hangs."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __del__(self):
        self.close()


def decode_responses(tokenizer, sequences: torch.Tensor, action_mask: torch.Tensor) -> List[str]:
    """The text of each row's response tokens (the last A positions, padding and special tokens dropped)."""
    ids = sequences[:, -action_mask.size(1):].masked_fill(action_mask == 0, tokenizer.pad_token_id)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


class RolloutScorer:
    """PPO's hook (``ExperienceMaker.score_fn``): reward functions on a rollout's decoded prompts and
    responses, added to the reward model's scores (or alone, ``use_reward_model=False``). Prompts are
    decoded from the rollout, so functions see the formatted prompt and get no dataset columns."""

    def __init__(self, functions: RewardFunctions, tokenizer, use_reward_model: bool = True):
        self.functions, self.tokenizer, self.use_reward_model = functions, tokenizer, use_reward_model

    def __call__(self, rollout, scores: torch.Tensor) -> torch.Tensor:
        num_prompt = rollout.sequences.size(1) - rollout.action_mask.size(1)
        prompts = self.tokenizer.batch_decode(rollout.sequences[:, :num_prompt], skip_special_tokens=True)
        responses = decode_responses(self.tokenizer, rollout.sequences, rollout.action_mask)
        extra = self.functions(prompts, responses).to(device=scores.device, dtype=scores.dtype)
        return scores + extra if self.use_reward_model else extra
