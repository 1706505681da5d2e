"""Critic-free RL on prompts: GRPO (arXiv:2402.03300), Dr. GRPO (arXiv:2503.20783), RLOO
(arXiv:2402.14740) and REINFORCE++ (arXiv:2501.03262).

Each prompt is answered ``num_samples_per_prompt`` times; the samples are scored by reward functions
and/or a reward model; the advantages come from the group (or the batch) instead of a critic, which is
never built. The PPO clipped objective then runs ``max_epochs`` passes over that one rollout batch.
The KL to the reference is a k3 loss term (GRPO) or a penalty in the reward (RLOO, REINFORCE++).
"""

import os
import signal
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..experience.reward_functions import decode_responses
from ..functional import compute_kl, log_probs_from_logits, masked_mean
from ..functional_rl import AGGREGATIONS, ADVANTAGE_ESTIMATORS, aggregate_loss, clipped_surrogate, \
    critic_free_advantages, kl_loss_term
from .callbacks import Callback
from .checkpoint import CheckpointManager
from .guards import StopRequest, agree_flags, guarded_step
from .strategies import Strategy
from .utils import fresh_iterator, set_sampler_epoch, skip_batches, to_device

# The choice each paper makes: (KL as "loss" term or in the "reward", loss aggregation).
ALGO_DEFAULTS = {"grpo": ("loss", "sequence"), "dr_grpo": ("loss", "constant"), "rloo": ("reward", "token"),
                 "reinforce_pp": ("reward", "token")}
GENERATE_KWARGS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "eos_token_id", "pad_token_id",
                   "decode")
RewardFn = Callable[[List[str], List[str], Dict[str, list]], torch.Tensor]


@dataclass
class GroupExperience:
    """One rollout batch: B = prompts x G samples, each prompt's samples contiguous."""
    sequences: torch.Tensor  # (B, T) left-padded prompt, then the response
    attention_mask: torch.Tensor  # (B, T)
    action_mask: torch.Tensor  # (B, A) 1 on response tokens up to and including EOS
    log_probs: torch.Tensor  # (B, A) behaviour-policy log-probs (PPO's "old" ones)
    ref_log_probs: torch.Tensor  # (B, A) reference log-probs (the log-probs themselves when kl_coef = 0)
    advantages: torch.Tensor  # (B, A)
    scores: torch.Tensor  # (B,) rewards of the samples

    def rows(self, index: torch.Tensor) -> "GroupExperience":
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)})


class GRPOTrainer:
    """Critic-free policy optimization.

    Args:
        actor, optim: the prepared policy and its optimizer. strategy: the backend.
        reward_fn: ``reward_fn(prompts, responses, columns) -> (B,)`` scores (e.g. ``RewardFunctions``).
        reward_model: a prepared ``RewardModel`` whose score is added to ``reward_fn``'s (either may be None,
            not both).
        reference_model: the frozen starting policy; None with a LoRA actor uses its adapters off.
        tokenizer: decodes responses for ``reward_fn``; supplies EOS and pad ids.
        algo: one of ``ADVANTAGE_ESTIMATORS``. num_samples_per_prompt: G (>= 2).
        max_epochs: PPO passes over each rollout batch. train_batch_size: rows per minibatch.
        clip_eps: PPO ratio clip. kl_coef: beta; 0 skips the reference entirely.
        kl_mode, loss_aggregation: ``"auto"`` takes the algorithm's own choice (``ALGO_DEFAULTS``).
        checkpoint, save_interval: a ``CheckpointManager`` and the rollout batches between checkpoints
            (weights, optimizer, schedule, RNG and prompt position: a resumed run continues exactly).
        **generate_kwargs: ``max_new_tokens``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``decode``.
    """

    def __init__(self, actor: nn.Module, strategy: Strategy, optim: Optimizer, reward_fn: Optional[RewardFn] = None,
                 reward_model: Optional[nn.Module] = None, reference_model: Optional[nn.Module] = None,
                 tokenizer=None, lr_scheduler=None, algo: str = "grpo", num_samples_per_prompt: int = 4,
                 max_epochs: int = 1, train_batch_size: int = 8, clip_eps: float = 0.2, kl_coef: float = 0.04,
                 kl_mode: str = "auto", loss_aggregation: str = "auto", max_grad_norm: float = 1.0,
                 callbacks: Sequence[Callback] = (), checkpoint: Optional[CheckpointManager] = None,
                 save_interval: int = 0, **generate_kwargs):
        if algo not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"algo must be one of {ADVANTAGE_ESTIMATORS}, got {algo!r}")
        if reward_fn is None and reward_model is None:
            raise ValueError("give a reward function, a reward model, or both")
        if num_samples_per_prompt < 2 and algo != "reinforce_pp":
            raise ValueError(f"{algo} compares the samples of a prompt: num_samples_per_prompt must be >= 2")
        unknown = set(generate_kwargs) - set(GENERATE_KWARGS)
        if unknown or kl_mode not in ("auto", "loss", "reward") or loss_aggregation not in ("auto",) + AGGREGATIONS:
            raise ValueError(f"unknown generate arguments {sorted(unknown)}, kl_mode {kl_mode!r} or "
                             f"loss_aggregation {loss_aggregation!r}")
        self.actor, self.strategy, self.optim, self.lr_scheduler = actor, strategy, optim, lr_scheduler
        self.reward_fn, self.reward_model, self.reference_model = reward_fn, reward_model, reference_model
        for frozen in (reward_model, reference_model):
            if frozen is not None:
                frozen.eval()  # no dropout: scores and reference log-probs are deterministic
        self.tokenizer, self.algo, self.group_size = tokenizer, algo, num_samples_per_prompt
        self.max_epochs, self.train_batch_size, self.clip_eps = max_epochs, train_batch_size, clip_eps
        self.kl_coef, self.max_grad_norm, self.callbacks = kl_coef, max_grad_norm, list(callbacks)
        self.kl_mode = ALGO_DEFAULTS[algo][0] if kl_mode == "auto" else kl_mode
        self.aggregation = ALGO_DEFAULTS[algo][1] if loss_aggregation == "auto" else loss_aggregation
        self.generate_kwargs = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                                **generate_kwargs}
        self.checkpoint, self.save_interval = checkpoint, save_interval
        self.step = 0
        self._position = {"episode": 0, "batch": 0}  # prompt batches consumed so far
        self.interrupted = 0  # the signal number that stopped ``fit`` early (a checkpoint was written)

    # -- rollouts -------------------------------------------------------------------------------
    @torch.no_grad()
    def reference_log_probs(self, sequences, attention_mask, action_mask) -> torch.Tensor:
        num_actions = action_mask.size(1)
        model = self.reference_model
        context = nullcontext()
        if model is None:
            model = self.strategy.unwrap_model(self.actor)
            context = model.reference()
        with context:
            logits = model(sequences, attention_mask, num_actions)  # (B, A, V)
        return log_probs_from_logits(logits, sequences[:, -num_actions:]) * action_mask

    @torch.no_grad()
    def score(self, batch: Dict, sequences, attention_mask, action_mask) -> torch.Tensor:
        """(B,) rewards: the reward functions on the decoded texts plus the reward model's score."""
        scores = torch.zeros(sequences.size(0), device=sequences.device)
        if self.reward_fn is not None:
            responses = decode_responses(self.tokenizer, sequences, action_mask)
            prompts = [p for p in batch["prompts"] for _ in range(self.group_size)]
            columns = {k: [v for v in vs for _ in range(self.group_size)] for k, vs in batch["columns"].items()}
            scores += self.reward_fn(prompts, responses, columns).to(scores.device)
        if self.reward_model is not None:
            scores += self.reward_model(sequences, attention_mask).float()
        return scores

    @torch.no_grad()
    def make_experience(self, batch: Dict) -> GroupExperience:
        """Sample G responses per prompt, score them, and compute the advantages."""
        tensors = to_device({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}, self.strategy.device)
        input_ids, attention_mask = tensors["input_ids"], tensors["attention_mask"]  # (B / G, P): each prompt once
        self.actor.eval()
        gather = self.strategy.gathers_for_generation
        synced = self.strategy.shards_parameters and self.strategy.world_size > 1 and not gather
        with self.strategy.gathered_params(self.actor) if gather else nullcontext():
            # The prompt runs once, its KV cache repeated for the G samples (adjacent rows of the rollout).
            rollout = self.strategy.unwrap_model(self.actor).generate(input_ids, attention_mask, synced=synced,
                                                                      num_samples=self.group_size,
                                                                      **self.generate_kwargs)
        mask = rollout.action_mask.float()
        scores = self.score(batch, rollout.sequences, rollout.attention_mask, mask)
        ref = self.reference_log_probs(rollout.sequences, rollout.attention_mask, mask) if self.kl_coef \
            else rollout.log_probs
        reward_kl = self.kl_coef if self.kl_mode == "reward" else 0.0
        advantages = critic_free_advantages(self.algo, scores, rollout.log_probs * mask, ref, mask, self.group_size,
                                            reward_kl)
        return GroupExperience(rollout.sequences, rollout.attention_mask, mask, rollout.log_probs * mask, ref,
                               advantages, scores)

    # -- learning -------------------------------------------------------------------------------
    def training_step(self, exp: GroupExperience) -> Dict[str, torch.Tensor]:
        """One clipped-objective update on a minibatch (plus the k3 KL term when it is a loss)."""
        self.actor.train()
        num_actions = exp.action_mask.size(1)
        logits = self.actor(exp.sequences, exp.attention_mask, num_actions)  # (B, A, V)
        log_probs = log_probs_from_logits(logits, exp.sequences[:, -num_actions:])  # (B, A)
        surrogate = clipped_surrogate(log_probs, exp.log_probs, exp.advantages, self.clip_eps)
        loss = aggregate_loss(surrogate, exp.action_mask, self.aggregation)
        stats = {"policy_loss": loss.detach()}
        if self.kl_mode == "loss" and self.kl_coef:
            kl = aggregate_loss(kl_loss_term(log_probs, exp.ref_log_probs), exp.action_mask, self.aggregation)
            loss = loss + self.kl_coef * kl
            stats["kl_loss"] = kl.detach()
        self.strategy.backward(loss, self.actor, self.optim)
        grad_norm, _, _ = guarded_step(self.strategy, self.actor, self.optim, self.max_grad_norm,
                                       torch.isfinite(loss.detach()))
        with torch.no_grad():
            ratio = (log_probs - exp.log_probs).exp()
            clipped = ((ratio - 1).abs() > self.clip_eps).float()
            stats["clip_frac"] = masked_mean(clipped, exp.action_mask)
        stats["grad_norm"] = torch.as_tensor(float(grad_norm))
        return stats

    def learn(self, exp: GroupExperience) -> Dict[str, float]:
        sums: Dict[str, float] = {}
        count = 0
        for _ in range(self.max_epochs):
            order = torch.randperm(exp.sequences.size(0))
            for start in range(0, len(order), self.train_batch_size):
                for name, value in self.training_step(exp.rows(order[start:start + self.train_batch_size])).items():
                    sums[name] = sums.get(name, 0.0) + float(value)
                count += 1
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        return {name: total / max(count, 1) for name, total in sums.items()}

    # -- checkpoints and the loop ------------------------------------------------------------------
    def save_checkpoint(self) -> Optional[str]:
        if self.checkpoint is None:
            return None
        state = {"step": self.step, "position": dict(self._position),
                 "scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None}
        return self.checkpoint.save(self.step, {"actor": (self.actor, self.optim)}, state)

    def resume(self, path: str) -> None:
        """Continue from checkpoint directory ``path`` (written by ``save_checkpoint``)."""
        manager = self.checkpoint or CheckpointManager(os.path.dirname(path), self.strategy)
        state = manager.load(path, {"actor": (self.actor, self.optim)})
        self.step, self._position = state["step"], dict(state["position"])
        if self.lr_scheduler is not None and state["scheduler"] is not None:
            self.lr_scheduler.load_state_dict(state["scheduler"])
        for cb in self.callbacks:
            cb.on_resume(self.step)

    def fit(self, prompt_dataloader: DataLoader, num_episodes: int = 1,
            resume_from: Optional[str] = None) -> Dict[str, float]:
        """``num_episodes`` passes over the prompts; one rollout batch and its updates per prompt batch."""
        if resume_from:
            self.resume(resume_from)
        metrics: Dict[str, float] = {}
        for cb in self.callbacks:
            cb.on_fit_start(self)
        progress = tqdm(total=num_episodes * len(prompt_dataloader), initial=self.step, desc=self.algo,
                        disable=not self.strategy.is_rank0())
        start_episode, start_batch = self._position["episode"], self._position["batch"]
        with StopRequest() as stop:
            for episode in range(start_episode, num_episodes):
                set_sampler_epoch(prompt_dataloader, episode)
                skip = start_batch if episode == start_episode else 0
                for i, batch in enumerate(fresh_iterator(skip_batches(prompt_dataloader, skip)), start=skip):
                    metrics = self._train_on(batch, episode)
                    self._position = {"episode": episode, "batch": i + 1}
                    progress.update()
                    progress.set_postfix({"reward": f"{metrics['reward']:.3f}", "kl": f"{metrics['kl']:.3f}"})
                    if self._save_or_stop(stop):
                        break
                if self.interrupted:
                    break
        progress.close()
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return metrics

    def _save_or_stop(self, stop: StopRequest) -> bool:
        """Checkpoint on the interval, or when a signal reached any rank; True when ``fit`` must stop."""
        (stopping,) = agree_flags([stop.signum is not None], self.strategy)
        if stopping or (self.save_interval and self.step % self.save_interval == 0):
            self.save_checkpoint()
        if stopping:
            self.interrupted = int(stop.signum or signal.SIGTERM)  # the signal may have come to another rank
        return stopping

    def _train_on(self, batch: Dict, episode: int) -> Dict[str, float]:
        """Rollout, updates and the logged metrics of one prompt batch."""
        exp = self.make_experience(batch)
        kl = (compute_kl(exp.log_probs, exp.ref_log_probs) * exp.action_mask).sum(-1)
        stats = self.learn(exp)
        self.step += 1
        metrics = dict(zip(["reward", "kl", "response_length"], self.strategy.all_reduce_mean(
            [float(exp.scores.mean()), float(kl.mean()), float(exp.action_mask.sum(-1).mean())])))
        metrics.update(stats, episode=episode)
        for cb in self.callbacks:
            cb.on_log(self.step, metrics)
        return metrics
