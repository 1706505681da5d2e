"""Experiment trackers that :class:`MetricsLogger` forwards each stage's metrics to (``--report_to``).

Each backend imports its package only when chosen; a missing one is a ``MissingDependency`` naming the
extra to install (``minichatgpt[wandb]``...). Metrics are logged as ``<stage>/<name>`` at the trainer's step; one run per stage
in the project ``minichatgpt`` (``WANDB_PROJECT`` overrides it for W&B), grouped by the output
directory's parent (a pipeline's stages share one group).
"""

import importlib
import os
from typing import Any, Dict, List, Optional, Sequence

from ..extras import require as require_extra

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
# tracker -> (its package, the minichatgpt extra that installs it)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow"), "trackio": ("trackio", "trackio")}


def require(tracker: str, feature: Optional[str] = None):
    """Import the package of ``tracker``; a MissingDependency naming the extra when it is not installed."""
    package, extra = PACKAGES[tracker]
    require_extra((package,), extra, feature or f"--report_to {tracker}")
    return importlib.import_module(package)


class TensorBoardTracker:
    def __init__(self, log_dir: str, feature: Optional[str] = None):
        require("tensorboard", feature)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir)

    def log(self, metrics: Dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def finish(self) -> None:
        self.writer.flush()


class WandbTracker:
    """A W&B run; ``WANDB_MODE=offline`` (or ``WANDB_PROJECT``...) from the environment apply as usual."""

    def __init__(self, project: str, name: str, group: str, output_dir: str, config: Dict[str, Any]):
        wandb = require("wandb")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", project), name=name, group=group,
                              dir=output_dir, config=config, reinit="finish_previous")

    def log(self, metrics: Dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step, commit=True)  # each call is a whole row: no waiting for the next step

    def finish(self) -> None:
        self.run.finish()


class MLflowTracker:
    """An MLflow run in the experiment ``project`` (``MLFLOW_TRACKING_URI`` picks the store)."""

    def __init__(self, project: str, name: str, config: Dict[str, Any]):
        self.mlflow = require("mlflow")
        self.mlflow.set_experiment(project)
        self.mlflow.start_run(run_name=name)
        self.mlflow.log_params({k: v for k, v in config.items() if v is not None})

    def log(self, metrics: Dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def finish(self) -> None:
        self.mlflow.end_run()


class TrackioTracker:
    def __init__(self, project: str, name: str, config: Dict[str, Any]):
        self.trackio = require("trackio")
        self.trackio.init(project=project, name=name, config=config)

    def log(self, metrics: Dict[str, float], step: int) -> None:
        self.trackio.log(metrics, step=step)

    def finish(self) -> None:
        self.trackio.finish()


def build_trackers(report_to: Sequence[str], stage: str, output_dir: Optional[str],
                   config: Optional[Dict[str, Any]] = None, tensorboard_dir: Optional[str] = None) -> List[Any]:
    """The trackers ``report_to`` names (``none`` alone: none). ``tensorboard_dir`` (the older flag)
    adds TensorBoard; its directory defaults to ``OUTPUT_DIR/runs``."""
    names = [name for name in report_to if name != "none"]
    if tensorboard_dir and "tensorboard" not in names:
        names.append("tensorboard")
    output_dir = os.path.abspath(output_dir or ".")
    project, group, run = "minichatgpt", os.path.basename(os.path.dirname(output_dir)), stage
    flat = {k: v for k, v in (config or {}).items() if isinstance(v, (str, int, float, bool, type(None)))}
    builders = {
        "tensorboard": lambda: TensorBoardTracker(tensorboard_dir or os.path.join(output_dir, "runs")),
        "wandb": lambda: WandbTracker(project, run, group, output_dir, flat),
        "mlflow": lambda: MLflowTracker(project, run, flat),
        "trackio": lambda: TrackioTracker(project, run, flat),
    }
    unknown = [name for name in names if name not in builders]
    if unknown:
        raise ValueError(f"unknown tracker(s) {unknown}; choose from none, {', '.join(TRACKERS)}")
    return [builders[name]() for name in names]
