"""Stage 1: supervised fine-tuning with the LM loss on response tokens."""

import math
from typing import Dict

import torch
from torch.utils.data import DataLoader

from ..functional import IGNORE_INDEX, lm_loss
from .supervised import SupervisedTrainer
from .utils import to_device


class SFTTrainer(SupervisedTrainer):
    """Trains an ``LM``/``Actor`` on demonstrations (labels are ``IGNORE_INDEX`` on prompt tokens).

    Batches hold ``input_ids``, ``attention_mask`` and ``labels`` (B, T). Constructor arguments are
    those of ``SupervisedTrainer``.
    """

    desc = "sft"

    def loss(self, batch):
        logits = self.model(batch["input_ids"], batch["attention_mask"])  # (B, T, V)
        return lm_loss(logits, batch["labels"]), {}

    @torch.no_grad()
    def evaluate(self, dataloader: DataLoader) -> Dict[str, float]:
        """Token-weighted loss and perplexity over response tokens."""
        self.model.eval()
        total_loss, total_tokens = 0.0, 0.0
        for batch in dataloader:
            batch = to_device(batch, self.strategy.device)
            logits = self.model(batch["input_ids"], batch["attention_mask"])
            tokens = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total_loss += float(lm_loss(logits, batch["labels"])) * tokens
            total_tokens += tokens
        self.model.train()
        total_loss, total_tokens = self.strategy.all_reduce_mean([total_loss, total_tokens])
        eval_loss = total_loss / max(total_tokens, 1e-9)
        return {"eval_loss": eval_loss, "eval_perplexity": math.exp(min(eval_loss, 50.0))}
