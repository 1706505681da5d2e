"""The training loop shared by SFT and reward-model training: accumulation, clipping, schedule,
logging, periodic saves, evaluation. The trainers supply only their loss and evaluation."""

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader
from tqdm import tqdm

from .callbacks import Callback
from .strategies import Strategy
from .utils import set_sampler_epoch, to_device

# batch -> (loss to back-propagate, {metric name: scalar tensor}) for one micro-batch
LossFn = Callable[[Dict[str, torch.Tensor]], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]


class SupervisedTrainer:
    """Common constructor and ``fit`` of ``SFTTrainer`` and ``RewardModelTrainer``.

    Args:
        model, strategy, optim: a prepared model, its strategy and optimizer.
        lr_scheduler: stepped once per optimizer step.
        max_epochs: passes over the training data.
        accumulation_steps: micro-batches per optimizer step.
        max_grad_norm: gradient clipping threshold (0 disables).
        log_interval: optimizer steps between logged metrics (averaged over the interval and ranks).
        save_interval, save_fn: call ``save_fn(step)`` every ``save_interval`` optimizer steps.
        callbacks: receive ``on_log(step, metrics)``, ``on_fit_start`` and ``on_fit_end``.
    """

    desc = "train"

    def __init__(self, model: nn.Module, strategy: Strategy, optim: Optimizer, lr_scheduler=None,
                 max_epochs: int = 1, accumulation_steps: int = 1, max_grad_norm: float = 1.0,
                 log_interval: int = 10, save_interval: int = 0, save_fn: Optional[Callable[[int], None]] = None,
                 callbacks: Sequence[Callback] = ()):
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        self.model, self.strategy, self.optim, self.lr_scheduler = model, strategy, optim, lr_scheduler
        self.max_epochs, self.accumulation_steps, self.max_grad_norm = max_epochs, accumulation_steps, max_grad_norm
        self.log_interval, self.save_interval, self.save_fn = log_interval, save_interval, save_fn
        self.callbacks = list(callbacks)
        self.step = 0

    def loss(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        raise NotImplementedError

    def evaluate(self, dataloader: DataLoader) -> Dict[str, float]:
        raise NotImplementedError

    def _log(self, metrics: Dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_log(self.step, metrics)

    def _optimizer_step(self) -> float:
        grad_norm = self.strategy.clip_grad_norm(self.model, self.optim, self.max_grad_norm) \
            if self.max_grad_norm > 0 else torch.zeros(())
        self.strategy.optimizer_step(self.optim, self.model)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.step += 1
        return float(grad_norm)

    def fit(self, train_dataloader: DataLoader, eval_dataloader: Optional[DataLoader] = None) -> Dict[str, float]:
        """Train for ``max_epochs``; returns the last logged training metrics and the final evaluation."""
        for cb in self.callbacks:
            cb.on_fit_start(self)
        metrics: Dict[str, float] = {}
        total = math.ceil(len(train_dataloader) / self.accumulation_steps) * self.max_epochs
        progress = tqdm(total=total, desc=self.desc, disable=not self.strategy.is_rank0())
        window: Dict[str, list] = {}
        for epoch in range(self.max_epochs):
            set_sampler_epoch(train_dataloader, epoch)
            self.model.train()
            for i, batch in enumerate(train_dataloader):
                loss, stats = self.loss(to_device(batch, self.strategy.device))
                self.strategy.backward(loss / self.accumulation_steps, self.model, self.optim)
                for name, value in {"loss": loss, **stats}.items():
                    window.setdefault(name, []).append(value.detach().float())
                if (i + 1) % self.accumulation_steps and i + 1 != len(train_dataloader):
                    continue
                grad_norm = self._optimizer_step()
                progress.update()
                if self.step % self.log_interval == 0 or self.step == 1:
                    names = list(window)
                    values = self.strategy.all_reduce_mean([torch.stack(window[n]).mean() for n in names])
                    metrics = dict(zip(names, values), grad_norm=grad_norm, epoch=epoch,
                                   lr=self.optim.param_groups[0]["lr"])
                    progress.set_postfix({n: f"{metrics[n]:.4f}" for n in names})
                    self._log(metrics)
                    window = {}
                if self.save_interval and self.save_fn and self.step % self.save_interval == 0:
                    self.save_fn(self.step)
            if eval_dataloader is not None:
                evaluation = self.evaluate(eval_dataloader)
                metrics.update(evaluation)
                self._log(evaluation)
        progress.close()
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return metrics
