"""Stage 2: reward-model training on ranked pairs (InstructGPT arXiv:2203.02155, eq. 1)."""

from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..functional import pairwise_loss
from .supervised import SupervisedTrainer
from .utils import to_device


def score_pairs(model: nn.Module, batch: Dict[str, torch.Tensor], pad_token_id: int = 0):
    """Scores of chosen and rejected responses in one forward pass: (B,), (B,).

    Both halves are right-padded to a common length and stacked, so the backbone runs once on 2B rows.
    """
    chosen, rejected = batch["chosen_input_ids"], batch["rejected_input_ids"]
    length = max(chosen.size(1), rejected.size(1))
    ids = torch.cat([F.pad(chosen, (0, length - chosen.size(1)), value=pad_token_id),
                     F.pad(rejected, (0, length - rejected.size(1)), value=pad_token_id)])  # (2B, T)
    mask = torch.cat([F.pad(batch["chosen_attention_mask"], (0, length - chosen.size(1))),
                      F.pad(batch["rejected_attention_mask"], (0, length - rejected.size(1)))])  # (2B, T)
    scores = model(ids, mask)  # (2B,)
    return scores[:chosen.size(0)], scores[chosen.size(0):]


@torch.no_grad()
def evaluate_pairs(model: nn.Module, dataloader: DataLoader, device, loss_fn: str = "log_sig") -> Dict[str, float]:
    """Sums over a dataset of pairs: correct rankings, margins, loss; and the pair count."""
    was_training = model.training
    model.eval()
    sums = {"correct": 0.0, "margin": 0.0, "loss": 0.0, "count": 0.0}
    for batch in dataloader:
        chosen, rejected = score_pairs(model, to_device(batch, device))
        sums["correct"] += float((chosen > rejected).float().sum())
        sums["margin"] += float((chosen - rejected).sum())
        sums["loss"] += float(pairwise_loss(chosen, rejected, loss_fn)) * chosen.size(0)
        sums["count"] += chosen.size(0)
    model.train(was_training)
    return sums


class RewardModelTrainer(SupervisedTrainer):
    """Trains a ``RewardModel`` so that chosen responses score above rejected ones.

    Args:
        loss_fn: ``"log_sig"`` or ``"log_exp"`` (see ``minichatgpt.functional.pairwise_loss``).
        Other arguments are those of ``SupervisedTrainer``.
    """

    desc = "rm"

    def __init__(self, model, strategy, optim, lr_scheduler=None, loss_fn: str = "log_sig", **kwargs):
        pairwise_loss(torch.zeros(1), torch.zeros(1), loss_fn)  # reject an unknown loss_fn now, not mid-run
        super().__init__(model, strategy, optim, lr_scheduler, **kwargs)
        self.loss_fn = loss_fn

    def loss(self, batch):
        chosen, rejected = score_pairs(self.model, batch)
        stats = {"accuracy": (chosen > rejected).float().mean(), "margin": (chosen - rejected).mean()}
        return pairwise_loss(chosen, rejected, self.loss_fn), stats

    def evaluate(self, dataloader: DataLoader) -> Dict[str, float]:
        """Pairwise accuracy (chosen scored higher), mean margin and loss, over all ranks' pairs."""
        sums = evaluate_pairs(self.model, dataloader, self.strategy.device, self.loss_fn)
        correct, margin, loss, count = self.strategy.all_reduce_mean(
            [sums["correct"], sums["margin"], sums["loss"], sums["count"]])
        count = max(count, 1e-9)
        return {"eval_accuracy": correct / count, "eval_margin": margin / count, "eval_loss": loss / count}
