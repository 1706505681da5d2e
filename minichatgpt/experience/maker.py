"""Turning a rollout into PPO experience: reference log-probs, values, scores, rewards, GAE.

Reads like the recipe (InstructGPT arXiv:2203.02155, section 3.5):

1. the actor's log-probs of its own samples come with the rollout (kept during generation);
2. the reference model scores the same tokens -> per-token KL;
3. the critic gives one value per response token, the reward model one score per response;
4. rewards = -kl_coef * KL per token + score at the last real token;
5. GAE gives advantages and returns; advantages are whitened over real tokens.
"""

from contextlib import nullcontext
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..functional import compute_gae, compute_kl, compute_rewards, log_probs_from_logits, masked_whiten
from ..nn.generation import Rollout
from .experience import Experience
from .normalizer import RunningMoments


class ExperienceMaker:
    """Scores rollouts with the frozen models and the critic.

    Args:
        actor: the (prepared) actor; used for reference log-probs when ``reference_model`` is None, by
            switching its LoRA adapters off (``reference_context``).
        critic, reward_model: prepared models; called through their ``forward``.
        reference_model: a frozen copy of the initial policy, or None to share the actor's base weights.
        reference_context: context manager factory that turns the actor into the reference (adapters off).
        kl_estimator: ``"k1"`` or ``"k3"`` (see ``compute_kl``).
        score_clip: clip scores to ``[-score_clip, score_clip]``.
        normalize_scores: standardize scores with running statistics over all rollouts so far.
    """

    def __init__(self, actor: nn.Module, critic: nn.Module, reward_model: nn.Module,
                 reference_model: Optional[nn.Module] = None, reference_context=None, kl_estimator: str = "k1",
                 gamma: float = 1.0, lam: float = 0.95, score_clip: Optional[float] = None,
                 normalize_scores: bool = False, whiten_advantages: bool = True):
        if reference_model is None and reference_context is None:
            raise ValueError("give a reference model, or a reference_context that disables the actor's adapters")
        self.actor, self.critic, self.reward_model = actor, critic, reward_model
        self.reference_model = reference_model
        self.reference_context = reference_context
        self.kl_estimator, self.gamma, self.lam = kl_estimator, gamma, lam
        self.score_clip = score_clip
        self.score_moments = RunningMoments() if normalize_scores else None
        self.whiten_advantages = whiten_advantages
        # (rollout, reward-model scores) -> scores; reward functions hook in here (RolloutScorer)
        self.score_fn: Optional[Callable[[Rollout, torch.Tensor], torch.Tensor]] = None

    @torch.no_grad()
    def reference_log_probs(self, rollout: Rollout) -> torch.Tensor:
        """(B, A) log-probs of the rollout's response tokens under the reference policy."""
        num_actions = rollout.action_mask.size(1)
        model = self.reference_model if self.reference_model is not None else self.actor
        context = self.reference_context() if self.reference_model is None else nullcontext()
        with context:
            logits = model(rollout.sequences, rollout.attention_mask, num_actions)  # (B, A, V)
        return log_probs_from_logits(logits, rollout.sequences[:, -num_actions:]) * rollout.action_mask

    @torch.no_grad()
    def make_experience(self, rollout: Rollout, kl_coef: float) -> Experience:
        sequences, attention_mask, action_mask = rollout.sequences, rollout.attention_mask, rollout.action_mask
        num_actions = action_mask.size(1)
        log_probs = rollout.log_probs  # (B, A), from generation: no second actor pass
        ref_log_probs = self.reference_log_probs(rollout)  # (B, A)
        values = self.critic(sequences, attention_mask, num_actions) * action_mask  # (B, A)
        scores = self.reward_model(sequences, attention_mask)  # (B,)
        if self.score_fn is not None:
            scores = self.score_fn(rollout, scores)

        if self.score_moments is not None:
            self.score_moments.update(scores)
            scores = self.score_moments.normalize(scores)
        kl = compute_kl(log_probs, ref_log_probs, self.kl_estimator) * action_mask  # (B, A)
        rewards = compute_rewards(scores, kl, action_mask, kl_coef, self.score_clip)  # (B, A)
        advantages, returns = compute_gae(values, rewards, action_mask, self.gamma, self.lam)
        if self.whiten_advantages:
            advantages = masked_whiten(advantages, action_mask)
        return Experience(sequences=sequences, attention_mask=attention_mask, action_mask=action_mask,
                          log_probs=log_probs, values=values, returns=returns, advantages=advantages,
                          scores=scores, kl=kl.sum(-1))
