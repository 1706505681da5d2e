"""Preference optimization without a reward model: DPO (arXiv:2305.18290), IPO (arXiv:2310.12036) and
SimPO (arXiv:2405.14734) on the reward model's ranked pairs.

The reference policy is never a second model in memory: with LoRA it is the policy with its adapters
off; otherwise its sequence log-probs are computed once, before training, for every pair of the
training and evaluation data (SimPO needs none). The loop, accumulation, checkpoints and exact resume
are ``SupervisedTrainer``'s.
"""

from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..functional import log_probs_from_logits
from ..functional_rl import PREFERENCE_LOSSES, PreferenceLoss, dpo_loss, ipo_loss, sequence_log_probs, simpo_loss
from ..nn.lora import is_lora
from .supervised import SupervisedTrainer
from .utils import to_device

REFERENCES = ("auto", "precompute", "adapters_off", "none")
Key = Tuple[Tuple[int, ...], Tuple[int, ...]]  # a pair's (chosen, rejected) token ids


class PairLogProbs(NamedTuple):
    chosen: torch.Tensor  # (B,) summed response log-probs of the chosen answers
    rejected: torch.Tensor  # (B,) the same for the rejected answers
    chosen_lengths: torch.Tensor  # (B,) response tokens of the chosen answers
    rejected_lengths: torch.Tensor  # (B,)


def pair_log_probs(model: nn.Module, batch: Dict[str, torch.Tensor]) -> PairLogProbs:
    """Sequence log-probs of both answers of each pair in one forward pass over 2B rows (prompt and
    padding tokens masked out). The batch comes from ``DPOCollator``."""
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])  # (2B, T)
    mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])  # (2B, T)
    response = torch.cat([batch["chosen_response_mask"], batch["rejected_response_mask"]])[:, 1:]  # (2B, T-1)
    logits = model(ids, mask)  # (2B, T, V)
    log_probs = log_probs_from_logits(logits[:, :-1], ids[:, 1:])  # (2B, T-1): position t predicts t + 1
    sums, lengths = sequence_log_probs(log_probs, response), response.sum(-1)  # (2B,), (2B,)
    n = batch["chosen_input_ids"].size(0)
    return PairLogProbs(sums[:n], sums[n:], lengths[:n], lengths[n:])


def pair_keys(batch: Dict[str, torch.Tensor]):
    """The token ids of each pair, padding removed: the key of its precomputed reference log-probs."""
    sides = []
    for side in ("chosen", "rejected"):
        ids, mask = batch[f"{side}_input_ids"].cpu(), batch[f"{side}_attention_mask"].cpu()
        sides.append([tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask)])
    return list(zip(*sides))


def preference_loss(policy: PairLogProbs, reference: Optional[Tuple[torch.Tensor, torch.Tensor]], loss_type: str,
                    beta: float, label_smoothing: float, simpo_gamma: float) -> PreferenceLoss:
    """The chosen loss of ``functional_rl`` on a batch's policy and reference log-probs."""
    if loss_type == "simpo":
        return simpo_loss(policy.chosen, policy.rejected, policy.chosen_lengths, policy.rejected_lengths, beta,
                          simpo_gamma)
    if loss_type == "ipo":
        return ipo_loss(policy.chosen, policy.rejected, reference[0], reference[1], tau=beta)
    return dpo_loss(policy.chosen, policy.rejected, reference[0], reference[1], beta, label_smoothing)


class DPOTrainer(SupervisedTrainer):
    """Trains an ``Actor`` on preference pairs (batches of ``DPOCollator``).

    Args:
        loss_type: ``"sigmoid"`` (DPO, with ``label_smoothing`` = conservative DPO), ``"ipo"`` (``beta``
            is IPO's tau) or ``"simpo"`` (reference-free; ``simpo_gamma`` is its margin).
        beta: the KL strength of DPO (implicit rewards are ``beta * log pi/pi_ref``); SimPO's scale.
        sft_coef: weight of the chosen answers' token-mean NLL added to the loss (0: none).
        reference: ``"adapters_off"`` (needs LoRA), ``"precompute"`` (before training, from the starting
            weights), ``"auto"`` (the first with LoRA, else the second) or ``"none"`` (SimPO only).
        Other arguments are those of ``SupervisedTrainer``.
    """

    desc = "dpo"

    def __init__(self, model, strategy, optim, lr_scheduler=None, loss_type: str = "sigmoid", beta: float = 0.1,
                 label_smoothing: float = 0.0, simpo_gamma: float = 1.0, sft_coef: float = 0.0,
                 reference: str = "auto", **kwargs):
        if loss_type not in PREFERENCE_LOSSES or reference not in REFERENCES:
            raise ValueError(f"loss_type must be one of {PREFERENCE_LOSSES} and reference one of {REFERENCES}, "
                             f"got {loss_type!r}, {reference!r}")
        super().__init__(model, strategy, optim, lr_scheduler, **kwargs)
        self.loss_type, self.beta, self.label_smoothing = loss_type, beta, label_smoothing
        self.simpo_gamma, self.sft_coef = simpo_gamma, sft_coef
        lora = is_lora(getattr(strategy.unwrap_model(model), "model", None))
        if loss_type == "simpo":
            reference = "none"
        elif reference == "auto":
            reference = "adapters_off" if lora else "precompute"
        elif reference == "adapters_off" and not lora:
            raise ValueError("reference='adapters_off' needs a LoRA model (lora_rank > 0); use 'precompute'")
        elif reference == "none":
            raise ValueError(f"loss_type {loss_type!r} needs a reference; only 'simpo' is reference-free")
        self.reference = reference
        self.reference_table: Dict[Key, Tuple[float, float]] = {}

    # -- reference log-probs ---------------------------------------------------------------------
    @torch.no_grad()
    def _reference_pass(self, batch) -> PairLogProbs:
        """Reference log-probs, in eval mode (no dropout) so that precomputed and live values agree."""
        was_training = self.model.training
        self.model.eval()
        try:
            if self.reference == "adapters_off":
                actor = self.strategy.unwrap_model(self.model)
                with actor.reference():
                    return pair_log_probs(actor, batch)
            return pair_log_probs(self.model, batch)
        finally:
            self.model.train(was_training)

    def precompute_reference(self, dataloader: DataLoader) -> None:
        """Reference log-probs of every pair of ``dataloader``'s dataset (all of it, on every rank)."""
        loader = DataLoader(dataloader.dataset, batch_size=dataloader.batch_size, shuffle=False,
                            collate_fn=dataloader.collate_fn)
        for batch in loader:
            out = self._reference_pass(to_device(batch, self.strategy.device))
            for key, c, r in zip(pair_keys(batch), out.chosen.tolist(), out.rejected.tolist()):
                self.reference_table[key] = (c, r)

    def reference_log_probs(self, batch) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """(B,), (B,) reference sequence log-probs of the chosen and rejected answers."""
        if self.reference == "none":
            return None
        if self.reference == "adapters_off":
            out = self._reference_pass(batch)
            return out.chosen, out.rejected
        try:
            values = [self.reference_table[key] for key in pair_keys(batch)]
        except KeyError:
            raise RuntimeError("a pair has no precomputed reference log-probs: call precompute_reference on "
                               "every loader before training (fit does it for its loaders)") from None
        table = torch.tensor(values, device=batch["chosen_input_ids"].device)  # (B, 2)
        return table[:, 0], table[:, 1]

    # -- loss, fit, evaluation ---------------------------------------------------------------------
    def loss(self, batch):
        reference = self.reference_log_probs(batch)
        policy = pair_log_probs(self.model, batch)
        out = preference_loss(policy, reference, self.loss_type, self.beta, self.label_smoothing, self.simpo_gamma)
        loss = out.loss
        margins = out.chosen_rewards - out.rejected_rewards
        stats = {"chosen_reward": out.chosen_rewards.mean(), "rejected_reward": out.rejected_rewards.mean(),
                 "reward_margin": margins.mean(), "reward_accuracy": (margins > 0).float().mean(),
                 "chosen_log_probs": policy.chosen.detach().mean(),
                 "rejected_log_probs": policy.rejected.detach().mean()}
        if self.sft_coef > 0:
            nll = -policy.chosen.sum() / policy.chosen_lengths.sum().clamp(min=1)
            loss = loss + self.sft_coef * nll
            stats["sft_loss"] = nll.detach()
        return loss, stats

    def fit(self, train_dataloader: DataLoader, eval_dataloader: Optional[DataLoader] = None,
            resume_from: Optional[str] = None) -> Dict[str, float]:
        """``SupervisedTrainer.fit``, after precomputing the reference log-probs when that is the reference
        (before a resumed checkpoint's weights are loaded: from the starting weights, as in the first run)."""
        if self.reference == "precompute" and not self.reference_table:
            for loader in (train_dataloader, eval_dataloader):
                if loader is not None:
                    self.precompute_reference(loader)
        return super().fit(train_dataloader, eval_dataloader, resume_from)

    @torch.no_grad()
    def evaluate(self, dataloader: DataLoader) -> Dict[str, float]:
        """Loss, pairwise accuracy (implicit reward of chosen above rejected) and mean margin, all ranks."""
        self.model.eval()
        sums = [0.0, 0.0, 0.0, 0.0]  # loss, correct, margin, count
        for batch in dataloader:
            batch = to_device(batch, self.strategy.device)
            policy = pair_log_probs(self.model, batch)
            out = preference_loss(policy, self.reference_log_probs(batch), self.loss_type, self.beta,
                                  self.label_smoothing, self.simpo_gamma)
            margins = out.chosen_rewards - out.rejected_rewards
            n = float(margins.numel())
            for i, value in enumerate((float(out.loss) * n, float((margins > 0).sum()), float(margins.sum()), n)):
                sums[i] += value
        self.model.train()
        loss, correct, margin, count = self.strategy.all_reduce_mean(sums)
        count = max(count, 1e-9)
        return {"eval_loss": loss / count, "eval_accuracy": correct / count, "eval_margin": margin / count}
