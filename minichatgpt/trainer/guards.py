"""Guards of a long run: stopping at a step boundary on SIGTERM / SIGINT (preemption, Ctrl-C) instead
of dying mid-step, and skipping optimizer steps whose loss or gradient norm is not finite."""

import os
import signal
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .checkpoint import NonFiniteError


def agree_flags(flags: List[bool], strategy) -> List[bool]:
    """Each flag true on any rank becomes true on every rank (one small all-reduce when distributed)."""
    if not torch.distributed.is_initialized() or strategy.world_size == 1:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=strategy.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def guarded_step(strategy, model, optim, max_grad_norm: float, finite, extra_flags: Sequence[bool] = ()
                 ) -> Tuple[float, bool, List[bool]]:
    """The optimizer step every trainer takes: clip (``max_grad_norm`` > 0), then step, unless the loss
    (``finite`` false) or, where the norm is known before the step, the gradient norm is non-finite on
    some rank: then the gradients are dropped. Returns the gradient norm, whether the step was skipped,
    and ``extra_flags`` made true on every rank when true on any (one all-reduce for all of them)."""
    grad_norm = strategy.clip_grad_norm(model, optim, max_grad_norm) if max_grad_norm > 0 else torch.zeros(())
    finite = bool(finite)
    if not strategy.clips_in_step:  # DeepSpeed/ColossalAI measure the norm inside their step
        finite = finite and bool(torch.isfinite(torch.as_tensor(grad_norm).detach().float()))
    skip, *flags = agree_flags([not finite, *extra_flags], strategy)
    if skip:
        strategy.zero_grad(optim, model)
    else:
        strategy.optimizer_step(optim, model)
    return float(grad_norm), skip, flags


class NonFiniteGuard:
    """Counts skipped (non-finite) optimizer steps; raises after ``max_consecutive`` in a row."""

    def __init__(self, max_consecutive: int = 5):
        if max_consecutive < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {max_consecutive}")
        self.max_consecutive, self.total, self.consecutive = max_consecutive, 0, 0

    def update(self, skipped: bool, step: int, strategy, what: str = "loss or gradient norm") -> None:
        if not skipped:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        strategy.print(f"warning: step {step}: non-finite {what}; the update was skipped "
                       f"({self.consecutive} in a row, {self.total} in all)")
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(f"{self.consecutive} optimizer steps in a row (up to step {step}) had a non-finite "
                                 f"{what}; stopping. Lower the learning rate, check the data, or raise "
                                 "--max_nonfinite_steps. The last checkpoint holds finite weights.")

    def state_dict(self) -> Dict[str, int]:
        return {"total": self.total, "consecutive": self.consecutive}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.total, self.consecutive = state["total"], state["consecutive"]


class StopRequest:
    """Turns the first SIGTERM or SIGINT into a request the trainer reads at its next step boundary.

    The trainer then saves a checkpoint and returns; a second signal exits at once (exit code
    128 + signal number) without saving. Handlers are installed only in the main thread, for the
    duration of the ``with`` block, and the previous handlers come back afterwards.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum
        print(f"\nreceived {signal.Signals(signum).name}: stopping after the current step "
              "(send it again to exit at once)", flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
