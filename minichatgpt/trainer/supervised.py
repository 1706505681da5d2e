"""The training loop shared by SFT and reward-model training: accumulation, clipping, schedule,
logging, periodic saves, evaluation. The trainers supply only their loss and evaluation."""

import math
import os
import signal
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader
from tqdm import tqdm

from .callbacks import Callback
from .checkpoint import CheckpointManager
from .configs import SupervisedTrainerConfig, with_overrides
from .guards import NonFiniteGuard, StopRequest, guarded_step
from .strategies import Strategy
from .utils import fresh_iterator, set_sampler_epoch, skip_batches, to_device

class SupervisedTrainer:
    """Common constructor and ``fit`` of ``SFTTrainer`` and ``RewardModelTrainer``.

    Args:
        model, strategy, optim: a prepared model, its strategy and optimizer.
        lr_scheduler: stepped once per optimizer step.
        config: the loop settings (:class:`SupervisedTrainerConfig`, or a command's config extending it):
            ``max_epochs``, ``accumulation_steps``, ``max_grad_norm`` (0 disables clipping),
            ``log_interval`` (metrics averaged over the interval and ranks), ``save_interval`` (0: only
            when stopped by a signal), ``max_nonfinite_steps`` (stop with ``NonFiniteError`` after this
            many skipped non-finite steps in a row).
        checkpoint_manager: where checkpoints go (``CheckpointManager``; ``checkpoint=`` is the older
            name); None writes none.
        callbacks: receive ``on_log(step, metrics)``, ``on_fit_start``, ``on_fit_end`` and ``on_resume``.
        **kwargs: fields of the config by name (overriding ``config``), as the original keyword arguments.
    """

    desc = "train"

    def __init__(self, model: nn.Module, strategy: Strategy, optim: Optimizer, lr_scheduler=None,
                 config: Optional[SupervisedTrainerConfig] = None, *,
                 checkpoint_manager: Optional[CheckpointManager] = None, callbacks: Sequence[Callback] = (),
                 **kwargs):
        config, extra = with_overrides(config, SupervisedTrainerConfig, kwargs, type(self).__name__, ("checkpoint",))
        if config.accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {config.accumulation_steps}")
        self.config = config
        self.model, self.strategy, self.optim, self.lr_scheduler = model, strategy, optim, lr_scheduler
        self.max_epochs, self.accumulation_steps = config.max_epochs, config.accumulation_steps
        self.max_grad_norm, self.log_interval, self.save_interval = (config.max_grad_norm, config.log_interval,
                                                                     config.save_interval)
        self.checkpoint = checkpoint_manager if checkpoint_manager is not None else extra.get("checkpoint")
        self.nonfinite = NonFiniteGuard(config.max_nonfinite_steps)
        self.callbacks = list(callbacks)
        self.step = 0
        self.interrupted = 0  # the signal number that stopped ``fit`` early (a checkpoint was written)
        self._position = {"epoch": 0, "batch": 0}  # data consumed by the optimizer steps so far
        self._window: Dict[str, list] = {}

    def loss(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        raise NotImplementedError

    def evaluate(self, dataloader: DataLoader) -> Dict[str, float]:
        raise NotImplementedError

    def _log(self, metrics: Dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_log(self.step, metrics)

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> Dict:
        """Everything but weights and optimizer that a resumed run needs to continue identically."""
        return {"step": self.step, "position": dict(self._position), "nonfinite": self.nonfinite.state_dict(),
                "scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
                "window": {n: [float(v) for v in vs] for n, vs in self._window.items()}}

    def load_state_dict(self, state: Dict) -> None:
        self.step, self._position = state["step"], dict(state["position"])
        self.nonfinite.load_state_dict(state["nonfinite"])
        if self.lr_scheduler is not None and state["scheduler"] is not None:
            self.lr_scheduler.load_state_dict(state["scheduler"])
        self._window = {n: [torch.tensor(v) for v in vs] for n, vs in state["window"].items()}

    def save_checkpoint(self) -> Optional[str]:
        if self.checkpoint is None:
            return None
        path = self.checkpoint.save(self.step, {"model": (self.model, self.optim)}, self.state_dict())
        self.strategy.print(f"saved checkpoint {path} ({self.checkpoint.last_save_seconds:.1f} s)")
        return path

    def resume(self, path: str) -> None:
        """Continue from checkpoint directory ``path`` (written by ``save_checkpoint``)."""
        manager = self.checkpoint or CheckpointManager(os.path.dirname(path), self.strategy)
        self.load_state_dict(manager.load(path, {"model": (self.model, self.optim)}))
        for callback in self.callbacks:
            callback.on_resume(self.step)
        self.strategy.print(f"resumed from {path} ({manager.last_load_seconds:.1f} s) at step {self.step} "
                            f"(epoch {self._position['epoch']}, batch {self._position['batch']})")

    # -- training ----------------------------------------------------------------------------------
    def _optimizer_step(self, losses_finite: torch.Tensor, stop: StopRequest) -> Tuple[float, bool]:
        """Clip, check, step; returns the gradient norm and whether a stop was requested on any rank."""
        grad_norm, skip, (stopping,) = guarded_step(self.strategy, self.model, self.optim, self.max_grad_norm,
                                                    losses_finite, [stop.signum is not None])
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()  # a skipped step still consumed its data: the schedule follows the data
        self.step += 1
        self.nonfinite.update(skip, self.step, self.strategy)
        return grad_norm, stopping

    def _group_size(self, batch_index: int, num_batches: int) -> int:
        """Micro-batches in the accumulation group of batch ``batch_index``: the last group of an epoch
        may be shorter, and its gradient is still the mean over the micro-batches it holds."""
        start = batch_index - batch_index % self.accumulation_steps
        return min(self.accumulation_steps, num_batches - start)

    def fit(self, train_dataloader: DataLoader, eval_dataloader: Optional[DataLoader] = None,
            resume_from: Optional[str] = None) -> Dict[str, float]:
        """Train for ``max_epochs``; returns the last logged training metrics and the final evaluation.

        ``resume_from``: a checkpoint directory to continue from (weights, optimizer, schedule, RNG,
        data position and metric window), so the run continues exactly where that one stopped.
        """
        if resume_from:
            self.resume(resume_from)
        for cb in self.callbacks:
            cb.on_fit_start(self)
        metrics: Dict[str, float] = {}
        steps_per_epoch = math.ceil(len(train_dataloader) / self.accumulation_steps)
        progress = tqdm(total=steps_per_epoch * self.max_epochs, initial=self.step, desc=self.desc,
                        disable=not self.strategy.is_rank0())
        start_epoch, start_batch = self._position["epoch"], self._position["batch"]
        with StopRequest() as stop:
            for epoch in range(start_epoch, self.max_epochs):
                set_sampler_epoch(train_dataloader, epoch)
                skip = start_batch if epoch == start_epoch else 0
                self.model.train()
                losses_finite = torch.ones((), dtype=torch.bool, device=self.strategy.device)
                for i, batch in enumerate(fresh_iterator(skip_batches(train_dataloader, skip)), start=skip):
                    loss, stats = self.loss(to_device(batch, self.strategy.device))
                    self.strategy.backward(loss / self._group_size(i, len(train_dataloader)), self.model,
                                           self.optim)
                    losses_finite = losses_finite & torch.isfinite(loss.detach())
                    for name, value in {"loss": loss, **stats}.items():
                        self._window.setdefault(name, []).append(value.detach().float())
                    if (i + 1) % self.accumulation_steps and i + 1 != len(train_dataloader):
                        continue
                    grad_norm, stopping = self._optimizer_step(losses_finite, stop)
                    losses_finite = torch.ones_like(losses_finite)
                    self._position = {"epoch": epoch, "batch": i + 1}
                    progress.update()
                    if self.step % self.log_interval == 0 or self.step == 1:
                        metrics = self._log_window(grad_norm, epoch, progress)
                    if stopping or (self.save_interval and self.step % self.save_interval == 0):
                        self.save_checkpoint()
                    if stopping:
                        self.interrupted = int(stop.signum or signal.SIGTERM)  # another rank's signal
                        break
                if self.interrupted:
                    break
                if eval_dataloader is not None:
                    evaluation = self.evaluate(eval_dataloader)
                    metrics.update(evaluation)
                    self._log(evaluation)
        progress.close()
        if self.interrupted:
            self.strategy.print(f"stopped by a signal at step {self.step}; resume with --resume auto")
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return metrics

    def _log_window(self, grad_norm: float, epoch: int, progress) -> Dict[str, float]:
        names = list(self._window)
        values = self.strategy.all_reduce_mean([torch.stack(self._window[n]).mean() for n in names])
        metrics = dict(zip(names, values), grad_norm=grad_norm, epoch=epoch, lr=self.optim.param_groups[0]["lr"],
                       nonfinite_steps=self.nonfinite.total)
        progress.set_postfix({n: f"{metrics[n]:.4f}" for n in names})
        self._log(metrics)
        self._window = {}
        return metrics
