"""Pure tensor math beyond PPO: preference losses (DPO, IPO, SimPO) and critic-free advantages (GRPO,
Dr. GRPO, RLOO, REINFORCE++), with the KL loss term and the loss aggregations they use.

Same rules as ``functional``: tensors and floats in, tensors or small NamedTuples out, masks explicit.
Shape letters: B batch (pairs, or prompts x samples), A response tokens, G samples per prompt.

References: DPO arXiv:2305.18290 (conservative DPO: label smoothing), IPO arXiv:2310.12036,
SimPO arXiv:2405.14734, GRPO arXiv:2402.03300, Dr. GRPO arXiv:2503.20783, RLOO arXiv:2402.14740,
REINFORCE++ arXiv:2501.03262.
"""

from typing import NamedTuple, Tuple

import torch
import torch.nn.functional as F

from .functional import compute_kl, compute_rewards, masked_mean, masked_whiten

PREFERENCE_LOSSES = ("sigmoid", "ipo", "simpo")
ADVANTAGE_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp")
AGGREGATIONS = ("token", "sequence", "constant")


# ---------------------------------------------------------------------------------------------
# sequence log-probabilities
# ---------------------------------------------------------------------------------------------
def sequence_log_probs(log_probs: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``log pi(y|x)``: the sum of response-token log-probs, prompt and padding masked out.

    Args:
        log_probs: (B, A) per-token log-probs.
        response_mask: (B, A) 1 on response tokens.
    Returns:
        (B,) float32 sums.
    """
    return (log_probs.float() * response_mask.to(torch.float32)).sum(-1)


# ---------------------------------------------------------------------------------------------
# preference losses
# ---------------------------------------------------------------------------------------------
class PreferenceLoss(NamedTuple):
    loss: torch.Tensor  # scalar, mean over pairs
    chosen_rewards: torch.Tensor  # (B,) implicit rewards of the chosen answers (detached)
    rejected_rewards: torch.Tensor  # (B,) implicit rewards of the rejected answers (detached)


def implicit_rewards(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward ``beta * (log pi(y|x) - log pi_ref(y|x))`` of (B,) sequence log-probs."""
    return beta * (log_probs - ref_log_probs)


def dpo_loss(chosen_log_probs: torch.Tensor, rejected_log_probs: torch.Tensor, ref_chosen_log_probs: torch.Tensor,
             ref_rejected_log_probs: torch.Tensor, beta: float = 0.1, label_smoothing: float = 0.0) -> PreferenceLoss:
    """Sigmoid DPO (arXiv:2305.18290, eq. 7) with conservative label smoothing ``eps``.

    ``h = logr(y_w) - logr(y_l)`` with ``logr = log pi - log pi_ref`` (all (B,) sequence sums);
    loss ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``, mean over pairs.
    """
    chosen = implicit_rewards(chosen_log_probs, ref_chosen_log_probs, beta)
    rejected = implicit_rewards(rejected_log_probs, ref_rejected_log_probs, beta)
    logits = chosen - rejected  # beta * h
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLoss(losses.mean(), chosen.detach(), rejected.detach())


def ipo_loss(chosen_log_probs: torch.Tensor, rejected_log_probs: torch.Tensor, ref_chosen_log_probs: torch.Tensor,
             ref_rejected_log_probs: torch.Tensor, tau: float = 0.1) -> PreferenceLoss:
    """IPO (arXiv:2310.12036, eq. 17): ``(h - 1/(2 tau))^2``, mean over pairs.

    ``h`` is built from *summed* response log-probs, as in the paper and as DPO here (some libraries
    average over tokens instead). Implicit rewards are reported with ``tau`` in the place of beta.
    """
    chosen = chosen_log_probs - ref_chosen_log_probs
    rejected = rejected_log_probs - ref_rejected_log_probs
    losses = (chosen - rejected - 1.0 / (2.0 * tau)) ** 2
    return PreferenceLoss(losses.mean(), (tau * chosen).detach(), (tau * rejected).detach())


def simpo_loss(chosen_log_probs: torch.Tensor, rejected_log_probs: torch.Tensor, chosen_lengths: torch.Tensor,
               rejected_lengths: torch.Tensor, beta: float = 2.0, gamma: float = 1.0) -> PreferenceLoss:
    """SimPO (arXiv:2405.14734, eq. 6), reference-free and length-normalized:
    ``-log sigmoid(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma)``, mean over pairs.

    Args:
        chosen_lengths, rejected_lengths: (B,) response token counts ``|y|``.
    """
    chosen = beta * chosen_log_probs / chosen_lengths.to(chosen_log_probs.dtype).clamp(min=1.0)
    rejected = beta * rejected_log_probs / rejected_lengths.to(rejected_log_probs.dtype).clamp(min=1.0)
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return PreferenceLoss(losses.mean(), chosen.detach(), rejected.detach())


# ---------------------------------------------------------------------------------------------
# critic-free advantages (one scalar reward per sample; B = prompts x G, groups contiguous)
# ---------------------------------------------------------------------------------------------
def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 2 or scores.numel() % group_size:
        raise ValueError(f"need groups of >= 2 samples dividing the batch; got {scores.numel()} scores "
                         f"in groups of {group_size}")
    return scores.float().view(-1, group_size)  # (B/G, G)


def group_advantages(scores: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO (arXiv:2402.03300, section 4.1.2): ``A_i = (r_i - mean_g r) / (std_g r + eps)``.

    ``scale=False`` is Dr. GRPO (arXiv:2503.20783): ``A_i = r_i - mean_g r``. ``std`` is the unbiased
    sample standard deviation of the group, as in the reference implementations.

    Args:
        scores: (B,) rewards, each prompt's G samples contiguous.
    Returns:
        (B,) advantages, one per sample (given to each of its tokens).
    """
    groups = _groups(scores, group_size)
    centered = groups - groups.mean(-1, keepdim=True)
    if scale:
        centered = centered / (groups.std(-1, keepdim=True) + eps)
    return centered.view(-1)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (arXiv:2402.14740): ``A_i = r_i - (sum_j r_j - r_i) / (G - 1)``, the baseline of each sample
    being the mean reward of the other samples of its prompt. (B,) -> (B,)."""
    groups = _groups(scores, group_size)
    baseline = (groups.sum(-1, keepdim=True) - groups) / (group_size - 1)
    return (groups - baseline).view(-1)


def reward_to_go(rewards: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """Undiscounted returns ``G_t = sum_{s >= t} r_s`` over real tokens (gamma = 1). (B, A) -> (B, A)."""
    rewards = rewards * action_mask
    return rewards.flip(-1).cumsum(-1).flip(-1) * action_mask


def reinforce_pp_advantages(scores: torch.Tensor, log_probs: torch.Tensor, ref_log_probs: torch.Tensor,
                            action_mask: torch.Tensor, kl_coef: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (arXiv:2501.03262): per-token rewards with the k1 KL penalty (as PPO's), returns with
    gamma = 1, advantages whitened over all real tokens of the batch; no critic.

    Args:
        scores: (B,) sequence rewards; log_probs, ref_log_probs, action_mask: (B, A).
    Returns:
        advantages (B, A) and returns (B, A), zero on padding.
    """
    kl = compute_kl(log_probs, ref_log_probs, "k1")
    returns = reward_to_go(compute_rewards(scores, kl, action_mask, kl_coef), action_mask)
    return masked_whiten(returns, action_mask), returns


# ---------------------------------------------------------------------------------------------
# loss terms
# ---------------------------------------------------------------------------------------------
def aggregate_loss(per_token: torch.Tensor, action_mask: torch.Tensor, mode: str = "token") -> torch.Tensor:
    """Reduce a (B, A) per-token loss to a scalar.

    ``token``: sum over all real tokens / their count (DAPO, Dr. GRPO; every token weighs the same);
    ``sequence``: mean over each sequence's real tokens, then over sequences (the GRPO paper);
    ``constant``: sum over real tokens / (B * A), Dr. GRPO's length-unbiased form with a fixed divisor.
    """
    if mode == "token":
        return masked_mean(per_token, action_mask)
    if mode == "sequence":
        return masked_mean(per_token, action_mask, dim=-1).mean()
    if mode == "constant":
        return (per_token * action_mask).sum() / per_token.numel()
    raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {AGGREGATIONS}")


def clipped_surrogate(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                      clip_eps: float = 0.2) -> torch.Tensor:
    """Per-token PPO clipped objective (arXiv:1707.06347, eq. 7) as a loss:
    ``-min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)``. All (B, A); reduce with ``aggregate_loss``."""
    ratio = (log_probs - old_log_probs).exp()
    return -torch.min(ratio * advantages, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages)


def kl_loss_term(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 KL of GRPO's loss term: ``exp(ref - logp) - (ref - logp) - 1`` (>= 0). (B, A)."""
    return compute_kl(log_probs, ref_log_probs, "k3")


def critic_free_advantages(algo: str, scores: torch.Tensor, log_probs: torch.Tensor, ref_log_probs: torch.Tensor,
                           action_mask: torch.Tensor, group_size: int, kl_coef: float = 0.0) -> torch.Tensor:
    """(B, A) token advantages of one rollout batch for ``algo`` in ``ADVANTAGE_ESTIMATORS``.

    ``kl_coef`` > 0 puts the KL penalty into the reward: per token (k1) for REINFORCE++, as
    ``r_i - kl_coef * sum_t k1_t`` for the group estimators (RLOO's sequence-level form); pass 0 when
    the KL is a loss term instead (GRPO). A sequence advantage is given to each of its real tokens.
    """
    if algo == "reinforce_pp":
        return reinforce_pp_advantages(scores, log_probs, ref_log_probs, action_mask, kl_coef)[0]
    if kl_coef:
        scores = scores - kl_coef * (compute_kl(log_probs, ref_log_probs, "k1") * action_mask).sum(-1)
    if algo == "rloo":
        per_sample = rloo_advantages(scores, group_size)
    elif algo in ("grpo", "dr_grpo"):
        per_sample = group_advantages(scores, group_size, scale=algo == "grpo")
    else:
        raise ValueError(f"unknown algo {algo!r}; expected one of {ADVANTAGE_ESTIMATORS}")
    return per_sample[:, None] * action_mask  # (B, A)
