"""Stage 3: PPO on the reward model's scores with a KL penalty, optionally mixed with a pretraining
loss (PPO-ptx, InstructGPT arXiv:2203.02155 eq. 2; PPO arXiv:1707.06347)."""

import dataclasses
import os
import signal
from collections import defaultdict
from contextlib import nullcontext
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..experience import AdaptiveKLController, Experience, ExperienceMaker, FixedKLController, ReplayBuffer
from ..functional import (explained_variance, left_padding_mask, lm_loss, log_probs_and_entropy, masked_mean,
                          policy_loss, value_loss)
from ..tokenizer import stop_token_ids
from .callbacks import Callback
from .checkpoint import CheckpointManager
from .configs import PPOTrainerConfig, with_overrides
from .guards import NonFiniteGuard, StopRequest, agree_flags, guarded_step
from .ppo_state import load_ppo_state, ppo_state_dict
from .strategies import Strategy
from .utils import count_parameters, cycle, disable_dropout, to_device

# Generation arguments that are not config fields (max_new_tokens, temperature, top_k, top_p, greedy are).
GENERATE_KWARGS = ("max_length", "do_sample", "eos_token_id", "pad_token_id", "checkpoint")


def generation_arguments(config: PPOTrainerConfig, extra: dict, tokenizer, generation_config) -> dict:
    """The rollout's ``generate`` arguments: sampling from ``config``, stop and pad ids from the tokenizer
    (every end-of-turn id: EOS, the chat template's terminator, the generation config's EOS ids) unless
    given, ``max_length`` (prompt included) instead of ``max_new_tokens`` when given."""
    kwargs = dict(do_sample=not config.greedy, temperature=config.temperature, top_k=config.top_k,
                  top_p=config.top_p, decode=config.decode, **extra)
    kwargs["max_length" if "max_length" in extra else "max_new_tokens"] = extra.get("max_length",
                                                                                    config.max_new_tokens)
    if tokenizer is not None:
        kwargs.setdefault("eos_token_id", stop_token_ids(tokenizer, generation_config))
        kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    missing = [k for k in ("eos_token_id", "pad_token_id") if kwargs.get(k) is None]
    if missing:
        raise ValueError(f"PPOTrainer needs {missing}: pass tokenizer= or set them as generation arguments")
    return kwargs


class PPOTrainer:
    """PPO for language models, with the constructor of the original project.

    Args:
        strategy: the backend.
        actor, critic, reward_model: prepared models.
        initial_model: the frozen reference policy; None to compute reference log-probs with the
            actor's LoRA adapters disabled (no second copy of the weights).
        actor_optim, critic_optim: their optimizers.
        config: the settings (:class:`PPOTrainerConfig`, or the ``ppo`` command's config, which extends it).
        tokenizer: supplies the end-of-turn ids to stop rollouts on and the pad id.
        callbacks: see ``minichatgpt.trainer.callbacks``.
        checkpoint_manager: a ``CheckpointManager`` (``checkpoint=`` is the older name); checkpoints are
            written every ``save_interval`` PPO updates (0: only when stopped by SIGTERM/SIGINT).
        **kwargs: any field of ``PPOTrainerConfig`` by name, overriding ``config`` (the original keyword
            arguments: ``kl_coef``, ``ptx_coef``, ``train_batch_size``, ``eps_clip``, ``value_clip``...),
            and generation arguments: ``do_sample`` (the opposite of ``greedy``), ``max_length`` (prompt
            included), ``eos_token_id`` (one id or a list), ``pad_token_id``.
    """

    def __init__(self, strategy: Strategy, actor: nn.Module, critic: nn.Module, reward_model: nn.Module,
                 initial_model: Optional[nn.Module], actor_optim: Optimizer, critic_optim: Optimizer,
                 config: Optional[PPOTrainerConfig] = None, *, tokenizer=None, callbacks: Sequence[Callback] = (),
                 checkpoint_manager: Optional[CheckpointManager] = None, **kwargs):
        config, extra = with_overrides(config, PPOTrainerConfig, kwargs, "PPOTrainer", GENERATE_KWARGS)
        if "do_sample" in extra:
            config = dataclasses.replace(config, greedy=not extra.pop("do_sample"))
        self.config = config
        self.strategy, self.actor, self.critic = strategy, actor, critic
        self.actor_optim, self.critic_optim = actor_optim, critic_optim
        self.callbacks = list(callbacks)
        self.checkpoint = checkpoint_manager if checkpoint_manager is not None else extra.pop("checkpoint", None)
        extra.pop("checkpoint", None)
        self.nonfinite = NonFiniteGuard(config.max_nonfinite_steps)
        self.interrupted = 0  # the signal number that stopped ``fit`` early
        self.kl_ctl = AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon) if config.target_kl \
            else FixedKLController(config.kl_coef)
        generation_config = getattr(getattr(strategy.unwrap_model(actor), "model", None), "generation_config", None)
        self.generate_kwargs = generation_arguments(config, extra, tokenizer, generation_config)
        for model in (actor, critic):
            disable_dropout(model)
        for model in (reward_model, initial_model):
            if model is not None:
                model.eval()
        reference_context = None
        if initial_model is None:
            strategy.print(strategy.unwrap_model(actor).freeze_reference())
            reference_context = strategy.unwrap_model(actor).reference
        self.maker = ExperienceMaker(actor, critic, reward_model, initial_model, reference_context, config.kl_estimator,
                                     config.gamma, config.lam, config.score_clip, config.normalize_scores)
        self.buffer = ReplayBuffer(config.train_batch_size, config.buffer_limit, config.buffer_cpu_offload,
                                   self.generate_kwargs["pad_token_id"], strategy.device)
        self.pin_memory = config.dataloader_pin_memory and strategy.device.type == "cuda"
        self._ptx_iter: Optional[cycle] = None
        self._prompt_iter: Optional[cycle] = None
        self.step = 0  # PPO updates done
        self.timestep = 0  # prompt batches rolled out
        self._rollout_stats: Dict[str, list] = defaultdict(list)
        self.num_params = {"actor": count_parameters(strategy.unwrap_model(actor)),
                           "critic": count_parameters(strategy.unwrap_model(critic)),
                           "reward_model": count_parameters(strategy.unwrap_model(reward_model)),
                           "reference": count_parameters(initial_model) if initial_model is not None else
                           count_parameters(strategy.unwrap_model(actor))}

    def _callbacks(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    # ------------------------------------------------------------------------------------------
    # rollout
    # ------------------------------------------------------------------------------------------
    def make_experience(self, batch) -> Experience:
        """Generate responses for a batch of left-padded prompts and score them."""
        if isinstance(batch, torch.Tensor):  # the original API passed bare left-padded prompt ids
            pad = self.generate_kwargs["pad_token_id"]
            batch = {"input_ids": batch, "attention_mask": left_padding_mask(batch, pad)}
        batch = to_device(batch, self.strategy.device)
        kwargs = dict(self.generate_kwargs)
        if "max_length" in kwargs:
            kwargs["max_new_tokens"] = kwargs.pop("max_length") - batch["input_ids"].size(1)

        self._callbacks("on_phase_start", "generation")
        gather = self.config.gather_for_generation and self.strategy.gathers_for_generation
        kwargs["synced"] = self.strategy.shards_parameters and self.strategy.world_size > 1 and not gather
        with self.strategy.gathered_params(self.actor) if gather else nullcontext():
            rollout = self.strategy.unwrap_model(self.actor).generate(batch["input_ids"], batch["attention_mask"],
                                                                      **kwargs)
        num_tokens = int(rollout.attention_mask.sum())
        flops = 2 * self.num_params["actor"] * num_tokens
        self._callbacks("on_phase_end", "generation", rollout.sequences.size(0), int(rollout.action_mask.sum()), flops)

        self._callbacks("on_phase_start", "experience")
        self.actor.eval()
        self.critic.eval()
        experience = self.maker.make_experience(rollout, self.kl_ctl.value)
        frozen = self.num_params["reference"] + self.num_params["critic"] + self.num_params["reward_model"]
        self._callbacks("on_phase_end", "experience", rollout.sequences.size(0), num_tokens, 2 * frozen * num_tokens)
        self.kl_ctl.update(float(experience.kl.mean()), experience.sequences.size(0))
        return experience

    # ------------------------------------------------------------------------------------------
    # learning
    # ------------------------------------------------------------------------------------------
    def _ptx_batch(self) -> Dict[str, torch.Tensor]:
        return to_device(next(self._ptx_iter), self.strategy.device)

    def _update(self, model: nn.Module, optim: Optimizer, loss: torch.Tensor) -> Tuple[float, bool]:
        grad_norm, skipped, _ = guarded_step(self.strategy, model, optim, self.config.max_grad_norm,
                                             torch.isfinite(loss.detach()).all())
        return grad_norm, skipped

    def training_step(self, experience: Experience) -> Dict[str, torch.Tensor]:
        """One PPO update of actor and critic on a minibatch (plus one ptx batch when enabled)."""
        self.actor.train()
        self.critic.train()
        num_actions, mask = experience.num_actions, experience.action_mask
        logits = self.actor(experience.sequences, experience.attention_mask, num_actions)  # (B, A, V)
        log_probs, entropy = log_probs_and_entropy(logits, experience.sequences[:, -num_actions:])  # (B, A) each
        actor = policy_loss(log_probs, experience.log_probs, experience.advantages, mask, self.config.clip_eps)
        use_ptx = self._ptx_iter is not None
        policy_weight = 1.0 - self.config.ptx_coef if use_ptx else 1.0
        # Separate backward passes: DDP/ZeRO engines expect one backward per forward.
        self.strategy.backward(policy_weight * actor.loss, self.actor, self.actor_optim)
        stats = {"policy_loss": actor.loss.detach(), "clip_frac": actor.clip_frac, "approx_kl": actor.approx_kl,
                 "entropy": masked_mean(entropy, mask)}
        actor_loss = actor.loss.detach()
        if use_ptx:
            batch = self._ptx_batch()
            ptx_loss = lm_loss(self.actor(batch["input_ids"], batch["attention_mask"]), batch["labels"])
            self.strategy.backward(self.config.ptx_coef * ptx_loss, self.actor, self.actor_optim)
            stats["ptx_loss"] = ptx_loss.detach()
            actor_loss = actor_loss + ptx_loss.detach()
        actor_norm, actor_skipped = self._update(self.actor, self.actor_optim, actor_loss)
        stats["actor_grad_norm"] = torch.tensor(actor_norm)

        values = self.critic(experience.sequences, experience.attention_mask, num_actions)  # (B, A)
        critic = value_loss(values, experience.values, experience.returns, mask, self.config.value_clip_eps)
        self.strategy.backward(critic.loss, self.critic, self.critic_optim)
        critic_norm, critic_skipped = self._update(self.critic, self.critic_optim, critic.loss)
        stats["critic_grad_norm"] = torch.tensor(critic_norm)
        self.nonfinite.update(actor_skipped or critic_skipped, self.step + 1, self.strategy,
                              "actor or critic loss or gradient norm")
        stats.update(value_loss=critic.loss.detach(), value_clip_frac=critic.clip_frac,
                     explained_variance=explained_variance(values.detach(), experience.returns, mask))
        return stats

    def learn(self) -> Dict[str, float]:
        """``max_epochs`` passes (or sampled minibatches) over the replay buffer; mean statistics."""
        self._callbacks("on_phase_start", "training")
        stats, num_samples, num_tokens = defaultdict(list), 0, 0
        for _ in range(self.config.max_epochs):
            batches = [self.buffer.sample()] if self.config.sample_replay_buffer else self.buffer.batches(shuffle=True)
            for experience in batches:
                if self.pin_memory:
                    experience = experience.pin_memory()
                for name, value in self.training_step(experience).items():
                    stats[name].append(value.float())
                num_samples += experience.sequences.size(0)
                num_tokens += int(experience.attention_mask.sum())
        trained = self.num_params["actor"] + self.num_params["critic"]
        self._callbacks("on_phase_end", "training", num_samples, num_tokens, 6 * trained * num_tokens)
        names = list(stats)
        return dict(zip(names, self.strategy.all_reduce_mean([torch.stack(stats[n]).mean() for n in names])))

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------
    def _models(self) -> Dict:
        return {"actor": (self.actor, self.actor_optim), "critic": (self.critic, self.critic_optim)}

    def state_dict(self) -> Dict:
        """Counters, KL controller, score statistics, data positions, rollout statistics and buffer."""
        return ppo_state_dict(self)

    def load_state_dict(self, state: Dict) -> None:
        load_ppo_state(self, state)

    def save_checkpoint(self) -> Optional[str]:
        if self.checkpoint is None:
            return None
        path = self.checkpoint.save(self.timestep, self._models(), self.state_dict())
        self.strategy.print(f"saved checkpoint {path} ({self.checkpoint.last_save_seconds:.1f} s)")
        return path

    def resume(self, path: str) -> None:
        manager = self.checkpoint or CheckpointManager(os.path.dirname(path), self.strategy)
        self.load_state_dict(manager.load(path, self._models()))
        self._callbacks("on_resume", self.step)
        self.strategy.print(f"resumed from {path} ({manager.last_load_seconds:.1f} s): timestep {self.timestep}, "
                            f"PPO step {self.step}")

    # ------------------------------------------------------------------------------------------
    # the loop
    # ------------------------------------------------------------------------------------------
    def fit(self, prompt_dataloader: DataLoader, pretrain_dataloader: Optional[DataLoader] = None,
            num_episodes: int = 1, max_timesteps: int = 10, update_timesteps: int = 10,
            resume_from: Optional[str] = None) -> Dict[str, float]:
        """Collect ``update_timesteps`` prompt batches of experience, learn from them, repeat.

        Each episode runs ``max_timesteps`` timesteps (one prompt batch each); the prompt and ptx
        iterators persist across episodes. ``resume_from``: a checkpoint directory to continue from.
        Checkpoints are numbered by timestep; their steps in the metrics file are PPO updates.
        """
        self._prompt_iter = cycle(prompt_dataloader)
        self._ptx_iter = cycle(pretrain_dataloader) if pretrain_dataloader is not None else None
        if resume_from:
            self.resume(resume_from)
        self._callbacks("on_fit_start", self)
        metrics: Dict[str, float] = {}
        total = num_episodes * max_timesteps
        progress = tqdm(total=total, initial=self.timestep, desc="ppo", disable=not self.strategy.is_rank0())
        with StopRequest() as stop:
            while self.timestep < total:
                episode = self.timestep // max_timesteps
                if self.timestep % max_timesteps == 0:
                    self._callbacks("on_episode_start", episode)
                experience = self.make_experience(next(self._prompt_iter))
                self.buffer.append(experience)
                self._rollout_stats["reward"].append(experience.scores.mean())
                self._rollout_stats["kl"].append(experience.kl.mean())
                self._rollout_stats["response_length"].append(experience.action_mask.sum(-1).float().mean())
                self.timestep += 1
                progress.update()
                updated = self.timestep % update_timesteps == 0
                if updated:
                    metrics = self._learn_and_log(episode, progress)
                if self.timestep % max_timesteps == 0:
                    self._callbacks("on_episode_end", episode)
                (stopping,) = agree_flags([stop.signum is not None], self.strategy)
                if stopping or (updated and self.config.save_interval and self.step % self.config.save_interval == 0):
                    self.save_checkpoint()
                if stopping:
                    self.interrupted = int(stop.signum or signal.SIGTERM)  # another rank's signal
                    self.strategy.print(f"stopped by a signal at timestep {self.timestep}; resume with --resume auto")
                    break
        progress.close()
        self._callbacks("on_fit_end", self)
        return metrics

    def _learn_and_log(self, episode: int, progress) -> Dict[str, float]:
        names = list(self._rollout_stats)
        metrics = dict(zip(names, self.strategy.all_reduce_mean(
            [torch.stack(self._rollout_stats[n]).mean() for n in names])))
        metrics.update(self.learn(), kl_coef=self.kl_ctl.value, episode=episode, nonfinite_steps=self.nonfinite.total)
        self.buffer.clear()
        self._rollout_stats = defaultdict(list)
        self.step += 1
        progress.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics['kl']:.3f}")
        self._callbacks("on_log", self.step, metrics)
        return metrics
