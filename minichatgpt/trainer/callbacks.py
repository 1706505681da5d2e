"""Trainer callbacks: metric logging (JSONL and experiment trackers) and performance measurement.

Trainers call the hooks below; a callback overrides only those it needs. Hooks run on every rank;
the callbacks that write files do so on rank 0 only.
"""

import json
import os
import time
from collections import defaultdict
from typing import Any, Dict, Optional, Sequence

import torch

from ..log import get_logger

logger = get_logger(__name__)


def _is_rank0() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


class Callback:
    """No-op hooks. ``phase`` is one of ``generation``, ``experience``, ``training``."""

    def on_fit_start(self, trainer) -> None: ...

    def on_fit_end(self, trainer) -> None: ...

    def on_episode_start(self, episode: int) -> None: ...

    def on_episode_end(self, episode: int) -> None: ...

    def on_phase_start(self, phase: str) -> None: ...

    def on_phase_end(self, phase: str, num_samples: int, num_tokens: int, flops: float) -> None: ...

    def on_log(self, step: int, metrics: Dict[str, float]) -> None: ...

    def on_resume(self, step: int) -> None:
        """The trainer continues from a checkpoint taken after optimizer step ``step``."""


class MetricsLogger(Callback):
    """Appends ``{"stage", "step", **metrics}`` lines to a JSONL file and forwards the metrics, as
    ``<stage>/<name>``, to experiment trackers (``minichatgpt.trainer.trackers``).

    Args:
        path: JSONL file (appended to, so the stages of a pipeline share one file); None for none.
        stage: name written on every line (``sft``, ``rm``, ``ppo``).
        tensorboard_dir: also write TensorBoard events there (needs ``tensorboard``:
            ``MissingDependency`` names the extra).
        trackers: objects with ``log(metrics, step)`` and ``finish()``, e.g. from ``build_trackers``.
    """

    def __init__(self, path: Optional[str], stage: str, tensorboard_dir: Optional[str] = None,
                 trackers: Sequence[Any] = ()):
        self.path, self.stage, self.trackers = path, stage, list(trackers)
        if not _is_rank0():
            self.trackers = []
            return
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if tensorboard_dir:
            from .trackers import TensorBoardTracker

            self.trackers.append(TensorBoardTracker(tensorboard_dir, feature="--tensorboard_dir"))

    def on_log(self, step: int, metrics: Dict[str, float]) -> None:
        if not _is_rank0():
            return
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({"stage": self.stage, "step": step, **metrics}) + "\n")
        for tracker in self.trackers:
            tracker.log({f"{self.stage}/{name}": value for name, value in metrics.items()}, step)

    def on_resume(self, step: int) -> None:
        """Drop this stage's lines logged after ``step`` by the interrupted run: the resumed run logs
        those steps again (other stages' lines are kept)."""
        if not _is_rank0() or not self.path or not os.path.isfile(self.path):
            return
        with open(self.path) as f:
            lines = f.readlines()
        kept = [line for line in lines if not _logged_after(line, self.stage, step)]
        if len(kept) != len(lines):
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.path)

    def on_fit_end(self, trainer) -> None:
        for tracker in self.trackers:
            tracker.finish()


def _logged_after(line: str, stage: str, step: int) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return not line.endswith("\n")  # the last line, cut short by a kill
    return record.get("stage") == stage and record.get("step", 0) > step


class PerformanceEvaluator(Callback):
    """Wall time, samples/s, tokens/s and estimated TFLOPS per phase, summed over ranks' work.

    FLOPs are estimated by the trainer with the usual dense-transformer count: ``2 * N * tokens`` for
    a forward pass of an N-parameter model and ``6 * N * tokens`` for forward plus backward
    (Kaplan et al. 2020, arXiv:2001.08361); attention's sequence-length term is ignored.
    """

    def __init__(self):
        self.totals = defaultdict(lambda: {"time": 0.0, "samples": 0, "tokens": 0, "flops": 0.0})
        self._start: Dict[str, float] = {}

    def on_phase_start(self, phase: str) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start[phase] = time.perf_counter()

    def on_phase_end(self, phase: str, num_samples: int, num_tokens: int, flops: float) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        total = self.totals[phase]
        total["time"] += time.perf_counter() - self._start.pop(phase)
        total["samples"] += num_samples
        total["tokens"] += num_tokens
        total["flops"] += flops

    def summary(self) -> Dict[str, Dict[str, float]]:
        """Per phase: time (s), samples/s, tokens/s, TFLOPS of this rank's work.

        The ``overall`` row divides the rollouts (samples and generated tokens of the generation
        phase) and the FLOPs of every phase by the total time: end-to-end RLHF throughput.
        """
        phases = dict(self.totals)
        generation = phases.get("generation", {"samples": 0, "tokens": 0})
        phases["overall"] = {"time": sum(p["time"] for p in self.totals.values()), "samples": generation["samples"],
                             "tokens": generation["tokens"], "flops": sum(p["flops"] for p in self.totals.values())}
        out = {}
        for phase, t in phases.items():
            seconds = max(t["time"], 1e-9)
            out[phase] = {"time_s": t["time"], "samples_per_s": t["samples"] / seconds,
                          "tokens_per_s": t["tokens"] / seconds, "tflops": t["flops"] / seconds / 1e12}
        return out

    def format_table(self) -> str:
        rows = [f"{'phase':<12}{'time (s)':>10}{'samples/s':>12}{'tokens/s':>12}{'TFLOPS':>10}"]
        for phase, s in self.summary().items():
            rows.append(f"{phase:<12}{s['time_s']:>10.2f}{s['samples_per_s']:>12.2f}{s['tokens_per_s']:>12.1f}"
                        f"{s['tflops']:>10.4f}")
        return "\n".join(rows)

    def on_fit_end(self, trainer) -> None:
        if _is_rank0():
            logger.info(self.format_table())
