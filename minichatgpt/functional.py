"""Pure tensor math of the RLHF recipe: tensors and floats in, tensors or small NamedTuples out.

Nothing here holds state, moves devices or calls ``.item()``; masks are explicit arguments. Shape
letters: B batch, T sequence, A response (action) tokens, V vocabulary.

References: InstructGPT arXiv:2203.02155, PPO arXiv:1707.06347, GAE arXiv:1506.02438,
KL estimators k1/k3 (J. Schulman, "Approximating KL divergence", 2020).
"""

from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label value that the LM loss skips (prompt and padding tokens)


# ---------------------------------------------------------------------------------------------
# masked reductions
# ---------------------------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is true (all of them, or along ``dim``).

    An all-masked row gives 0, not NaN.
    """
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the masked entries of ``x``."""
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    return ((x - mean) ** 2 * mask).sum() / (mask.sum() - 1).clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """Normalize the masked entries of ``x`` to zero mean and unit variance; masked entries become 0.

    Only real tokens enter the statistics, so padding never shifts the advantages (a common bug is to
    whiten over the whole padded tensor).
    """
    mask = mask.to(x.dtype)
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# ---------------------------------------------------------------------------------------------
# log-probabilities
# ---------------------------------------------------------------------------------------------
def log_probs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each label under ``softmax(logits)``.

    Computes ``logit[label] - logsumexp(logits)`` instead of a full ``log_softmax``: only one value per
    position is needed, so the (..., V) log-probability tensor is never materialized.

    Args:
        logits: (..., V) unnormalized scores; position i must already be aligned with ``labels[i]``.
        labels: (...) token ids.
    Returns:
        (...) float32 log-probabilities.
    """
    logits = logits.float()
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def log_probs_and_entropy(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``log_probs_from_logits`` and, without gradient, ``entropy_from_logits`` sharing one ``logsumexp``.

    The entropy ``lse - sum(p * logits)`` reuses the log-partition of the log-probs and needs a single
    (..., V) buffer (the probabilities, multiplied in place), instead of a second ``logsumexp`` pass and
    the three (..., V) tensors of ``log_softmax``, ``exp`` and the product.

    Returns:
        (...) float32 log-probabilities (differentiable) and (...) float32 entropies (detached).
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    log_probs = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse
    with torch.no_grad():
        lse, logits = lse.detach(), logits.detach()
        probs = (logits - lse.unsqueeze(-1)).exp_()
        entropy = lse - probs.mul_(logits).sum(-1)
    return log_probs, entropy


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` along the last dim: (..., V) -> (...)."""
    logits = logits.float()
    log_p = logits.log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)


# ---------------------------------------------------------------------------------------------
# KL penalty and per-token rewards (InstructGPT arXiv:2203.02155, eq. 2)
# ---------------------------------------------------------------------------------------------
def compute_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(policy || reference) estimate from log-probs of the sampled tokens.

    ``k1 = log p - log q`` (policy minus reference; unbiased, can be negative per token);
    ``k3 = (r - 1) - log r`` with ``r = q / p`` (unbiased, always >= 0, lower variance).

    Args:
        log_probs: (B, A) policy log-probs of the sampled tokens.
        ref_log_probs: (B, A) reference-model log-probs of the same tokens.
        estimator: ``"k1"`` or ``"k3"``.
    """
    log_ratio = log_probs.float() - ref_log_probs.float()
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1' or 'k3'")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last true position of each row of a (B, T) mask: (B,). Works for any padding side."""
    positions = torch.arange(mask.size(-1), device=mask.device)
    return (mask.long() * positions).argmax(-1)


def left_padding_mask(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """(B, T) attention mask of left-padded ids: 0 on the leading pad run of each row, 1 from its first
    other token on. A pad id later in a row (GPT-2 pads with its EOS id, which may occur inside a
    prompt) is a real token, so ``input_ids != pad_token_id`` would be wrong."""
    return ((input_ids != pad_token_id).long().cumsum(-1) > 0).long()


def compute_rewards(scores: torch.Tensor, kl: torch.Tensor, action_mask: torch.Tensor, kl_coef: float,
                    score_clip: Optional[float] = None) -> torch.Tensor:
    """Per-token rewards: ``-kl_coef * kl_t`` everywhere, plus the score at the last real token only.

    Args:
        scores: (B,) reward-model scores of the whole responses.
        kl: (B, A) per-token KL estimates.
        action_mask: (B, A) 1 for real response tokens (up to and including EOS).
        kl_coef: KL penalty coefficient (beta in InstructGPT).
        score_clip: clip scores to ``[-score_clip, score_clip]`` when given.
    Returns:
        (B, A) rewards, zero on padding.
    """
    if score_clip is not None:
        scores = scores.clamp(-score_clip, score_clip)
    rewards = -kl_coef * kl * action_mask
    last = last_token_index(action_mask)  # (B,)
    return rewards.scatter_add(1, last.unsqueeze(1), scores.to(rewards.dtype).unsqueeze(1))


# ---------------------------------------------------------------------------------------------
# generalized advantage estimation (arXiv:1506.02438)
# ---------------------------------------------------------------------------------------------
def compute_gae(values: torch.Tensor, rewards: torch.Tensor, action_mask: torch.Tensor, gamma: float = 1.0,
                lam: float = 0.95) -> Tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns by GAE over response tokens.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, with
    ``V`` and ``A`` taken as zero past the last real token; ``returns = A + V``.

    Args:
        values: (B, A) critic values of the state before each response token.
        rewards: (B, A) per-token rewards.
        action_mask: (B, A) 1 for real response tokens; responses are contiguous from position 0.
    Returns:
        advantages (B, A) and returns (B, A), both zero on padding.
    """
    mask = action_mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # Padding (mask 0) resets the recursion, so nothing leaks backwards from beyond a response.
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------
class PolicyLoss(NamedTuple):
    loss: torch.Tensor  # scalar
    clip_frac: torch.Tensor  # scalar, fraction of real tokens whose ratio was clipped
    approx_kl: torch.Tensor  # scalar, mean k3 KL(old || new) over real tokens


def policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                action_mask: torch.Tensor, clip_eps: float = 0.2) -> PolicyLoss:
    """PPO clipped surrogate (arXiv:1707.06347, eq. 7), masked mean over real tokens.

    ``-min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A)`` with ``ratio = exp(log_probs -
    old_log_probs)``. All inputs are (B, A).
    """
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.exp()
    surr1 = ratio * advantages
    surr2 = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = masked_mean(-torch.min(surr1, surr2), action_mask)
    with torch.no_grad():
        clipped = (surr2 < surr1).to(log_probs.dtype)
        clip_frac = masked_mean(clipped, action_mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, action_mask)
    return PolicyLoss(loss, clip_frac, approx_kl)


class ValueLoss(NamedTuple):
    loss: torch.Tensor  # scalar
    clip_frac: torch.Tensor  # scalar, fraction of real tokens where the clipped error was larger


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               action_mask: torch.Tensor, value_clip_eps: Optional[float] = 0.2) -> ValueLoss:
    """Clipped value loss ``0.5 * max((V - R)^2, (V_clip - R)^2)``, masked mean over real tokens.

    ``V_clip = old_V + clip(V - old_V, -value_clip_eps, value_clip_eps)``; ``value_clip_eps=None``
    gives the plain squared error. All inputs are (B, A).
    """
    error = (values - returns) ** 2
    if value_clip_eps is None:
        return ValueLoss(0.5 * masked_mean(error, action_mask), torch.zeros((), device=values.device))
    values_clipped = old_values + (values - old_values).clamp(-value_clip_eps, value_clip_eps)
    error_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(error, error_clipped), action_mask)
    clip_frac = masked_mean((error_clipped > error).to(values.dtype), action_mask).detach()
    return ValueLoss(loss, clip_frac)


def pairwise_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, kind: str = "log_sig") -> torch.Tensor:
    """Reward-model ranking loss on (B,) scores (InstructGPT arXiv:2203.02155, eq. 1).

    ``log_sig``: ``-log sigmoid(r_chosen - r_rejected)``; ``log_exp``: ``log(1 + exp(r_rejected -
    r_chosen))``. They are the same function written two ways; ``log_exp`` is kept for compatibility.
    Both are computed stably (softplus), mean over the batch.
    """
    margin = chosen_scores - rejected_scores
    if kind == "log_sig":
        return -F.logsigmoid(margin).mean()
    if kind == "log_exp":
        return F.softplus(-margin).mean()
    raise ValueError(f"unknown loss_fn {kind!r}; expected 'log_sig' or 'log_exp'")


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: logits at t predict labels at t+1; ``IGNORE_INDEX`` labels are skipped.

    Args:
        logits: (B, T, V).
        labels: (B, T), equal to the input ids except ``IGNORE_INDEX`` where no loss is wanted.
    """
    shift_logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()  # (B*(T-1), V)
    shift_labels = labels[:, 1:].reshape(-1)  # (B*(T-1),)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var(R - V) / Var(R)`` over masked entries: 1 is a perfect critic, <= 0 a useless one."""
    return 1.0 - masked_var(returns - values, mask) / masked_var(returns, mask).clamp(min=1e-8)
