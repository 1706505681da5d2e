"""Stage 3: PPO on the reward model's scores with a KL penalty, optionally mixed with a pretraining
loss (PPO-ptx, InstructGPT arXiv:2203.02155 eq. 2; PPO arXiv:1707.06347)."""

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
from .guards import NonFiniteGuard, StopRequest, agree_flags
from .strategies import Strategy
from .utils import count_parameters, cycle, disable_dropout, to_device

GENERATE_KWARGS = ("max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "eos_token_id",
                   "pad_token_id")


class PPOTrainer:
    """PPO for language models, with the constructor of the original project.

    Args:
        strategy: the backend.
        actor, critic, reward_model: prepared models.
        initial_model: the frozen reference policy; None to compute reference log-probs with the
            actor's LoRA adapters disabled (no second copy of the weights).
        actor_optim, critic_optim: their optimizers.
        kl_coef: initial KL penalty coefficient; with ``target_kl`` it adapts (Ziegler et al. 2019).
        ptx_coef: weight of the pretraining LM loss: ``(1 - ptx_coef) * policy + ptx_coef * lm``;
            used only when ``fit`` gets a ``pretrain_dataloader``.
        train_batch_size: rows per PPO minibatch.
        buffer_limit, buffer_cpu_offload: replay buffer size cap and CPU storage.
        eps_clip, value_clip: PPO ratio clip and value clip (None disables value clipping).
        experience_batch_size: kept for compatibility: the prompt batch size is the dataloader's.
        max_epochs: passes over the replay buffer per update.
        tokenizer: supplies default EOS and pad ids for generation.
        sample_replay_buffer: one randomly sampled minibatch per epoch instead of a full pass.
        dataloader_pin_memory: pin replay-buffer batches before moving them to the GPU.
        callbacks: see ``minichatgpt.trainer.callbacks``.
        gamma, lam: GAE parameters. kl_estimator: ``k1`` or ``k3``. score_clip, normalize_scores:
            reward shaping. target_kl, kl_horizon: adaptive KL controller. max_grad_norm: clipping.
        gather_for_generation: with sharded parameters (FSDP, ZeRO-3), gather the actor's full weights
            once per rollout instead of letting every generated token all-gather each layer.
        checkpoint, save_interval: a ``CheckpointManager`` and the PPO updates between checkpoints
            (0: only when stopped by SIGTERM/SIGINT, which saves at the next timestep boundary).
        max_nonfinite_steps: stop after this many PPO minibatch updates in a row with a non-finite
            loss or gradient norm (each is skipped and counted).
        **generate_kwargs: ``max_new_tokens`` (or ``max_length``, prompt included), ``do_sample``,
            ``temperature``, ``top_k``, ``top_p``, ``eos_token_id``, ``pad_token_id``.
    """

    def __init__(self, strategy: Strategy, actor: nn.Module, critic: nn.Module, reward_model: nn.Module,
                 initial_model: Optional[nn.Module], actor_optim: Optimizer, critic_optim: Optimizer,
                 kl_coef: float = 0.1, ptx_coef: float = 0.9, train_batch_size: int = 8, buffer_limit: int = 0,
                 buffer_cpu_offload: bool = True, eps_clip: float = 0.2, value_clip: Optional[float] = 0.4,
                 experience_batch_size: int = 8, max_epochs: int = 1, tokenizer=None,
                 sample_replay_buffer: bool = False, dataloader_pin_memory: bool = True,
                 callbacks: Sequence[Callback] = (), gamma: float = 1.0, lam: float = 0.95,
                 kl_estimator: str = "k1", score_clip: Optional[float] = None, normalize_scores: bool = False,
                 target_kl: Optional[float] = None, kl_horizon: int = 10000, max_grad_norm: float = 1.0,
                 gather_for_generation: bool = True, checkpoint: Optional[CheckpointManager] = None,
                 save_interval: int = 0, max_nonfinite_steps: int = 5, **generate_kwargs):
        unknown = sorted(set(generate_kwargs) - set(GENERATE_KWARGS))
        if unknown:
            raise TypeError(f"PPOTrainer got unknown arguments {unknown}; generation options are {GENERATE_KWARGS}")
        self.strategy, self.actor, self.critic = strategy, actor, critic
        self.actor_optim, self.critic_optim = actor_optim, critic_optim
        self.ptx_coef, self.train_batch_size, self.max_epochs = ptx_coef, train_batch_size, max_epochs
        self.eps_clip, self.value_clip, self.max_grad_norm = eps_clip, value_clip, max_grad_norm
        self.sample_replay_buffer, self.callbacks = sample_replay_buffer, list(callbacks)
        self.experience_batch_size = experience_batch_size
        self.gather_for_generation = gather_for_generation
        self.checkpoint, self.save_interval = checkpoint, save_interval
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps)
        self.interrupted = 0  # the signal number that stopped ``fit`` early
        self.kl_ctl = AdaptiveKLController(kl_coef, target_kl, kl_horizon) if target_kl else FixedKLController(kl_coef)
        generation_config = getattr(getattr(strategy.unwrap_model(actor), "model", None), "generation_config", None)
        self.generate_kwargs = self._generate_kwargs(generate_kwargs, tokenizer, generation_config)
        for model in (actor, critic):
            disable_dropout(model)
        for model in (reward_model, initial_model):
            if model is not None:
                model.eval()
        reference_context = None
        if initial_model is None:
            strategy.print(strategy.unwrap_model(actor).freeze_reference())
            reference_context = strategy.unwrap_model(actor).reference
        self.maker = ExperienceMaker(actor, critic, reward_model, initial_model, reference_context, kl_estimator,
                                     gamma, lam, score_clip, normalize_scores)
        self.buffer = ReplayBuffer(train_batch_size, buffer_limit, buffer_cpu_offload,
                                   self.generate_kwargs["pad_token_id"], strategy.device)
        self.pin_memory = dataloader_pin_memory and strategy.device.type == "cuda"
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

    @staticmethod
    def _generate_kwargs(kwargs: dict, tokenizer, generation_config) -> dict:
        kwargs = dict(kwargs)
        if tokenizer is not None:  # stop on every end-of-turn id: EOS, template terminator, config EOS ids
            kwargs.setdefault("eos_token_id", stop_token_ids(tokenizer, generation_config))
            kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        missing = [k for k in ("eos_token_id", "pad_token_id") if kwargs.get(k) is None]
        if missing:
            raise ValueError(f"PPOTrainer needs {missing}: pass tokenizer= or set them as generation arguments")
        if "max_new_tokens" not in kwargs and "max_length" not in kwargs:
            kwargs["max_new_tokens"] = 64
        return kwargs

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
        gather = self.gather_for_generation and self.strategy.gathers_for_generation
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
        """Clip and step unless the loss or gradient norm is non-finite on some rank; (norm, skipped)."""
        grad_norm = self.strategy.clip_grad_norm(model, optim, self.max_grad_norm) if self.max_grad_norm > 0 \
            else torch.zeros(())
        finite = bool(torch.isfinite(loss.detach()).all())
        if not self.strategy.clips_in_step:
            finite = finite and bool(torch.isfinite(torch.as_tensor(grad_norm)))
        (skip,) = agree_flags([not finite], self.strategy)
        if skip:
            self.strategy.zero_grad(optim, model)
        else:
            self.strategy.optimizer_step(optim, model)
        return float(grad_norm), skip

    def training_step(self, experience: Experience) -> Dict[str, torch.Tensor]:
        """One PPO update of actor and critic on a minibatch (plus one ptx batch when enabled)."""
        self.actor.train()
        self.critic.train()
        num_actions, mask = experience.num_actions, experience.action_mask
        logits = self.actor(experience.sequences, experience.attention_mask, num_actions)  # (B, A, V)
        log_probs, entropy = log_probs_and_entropy(logits, experience.sequences[:, -num_actions:])  # (B, A) each
        actor = policy_loss(log_probs, experience.log_probs, experience.advantages, mask, self.eps_clip)
        use_ptx = self._ptx_iter is not None
        policy_weight = 1.0 - self.ptx_coef if use_ptx else 1.0
        # Separate backward passes: DDP/ZeRO engines expect one backward per forward.
        self.strategy.backward(policy_weight * actor.loss, self.actor, self.actor_optim)
        stats = {"policy_loss": actor.loss.detach(), "clip_frac": actor.clip_frac, "approx_kl": actor.approx_kl,
                 "entropy": masked_mean(entropy, mask)}
        actor_loss = actor.loss.detach()
        if use_ptx:
            batch = self._ptx_batch()
            ptx_loss = lm_loss(self.actor(batch["input_ids"], batch["attention_mask"]), batch["labels"])
            self.strategy.backward(self.ptx_coef * ptx_loss, self.actor, self.actor_optim)
            stats["ptx_loss"] = ptx_loss.detach()
            actor_loss = actor_loss + ptx_loss.detach()
        actor_norm, actor_skipped = self._update(self.actor, self.actor_optim, actor_loss)
        stats["actor_grad_norm"] = torch.tensor(actor_norm)

        values = self.critic(experience.sequences, experience.attention_mask, num_actions)  # (B, A)
        critic = value_loss(values, experience.values, experience.returns, mask, self.value_clip)
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
        for _ in range(self.max_epochs):
            batches = [self.buffer.sample()] if self.sample_replay_buffer else self.buffer.batches(shuffle=True)
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
        moments = self.maker.score_moments
        return {"step": self.step, "timestep": self.timestep, "kl_coef": self.kl_ctl.value,
                "score_moments": None if moments is None else
                {"mean": moments.mean, "var": moments.var, "count": moments.count},
                "prompts": self._prompt_iter.state_dict() if self._prompt_iter is not None else None,
                "ptx": self._ptx_iter.state_dict() if self._ptx_iter is not None else None,
                "rollout_stats": {n: [float(v) for v in vs] for n, vs in self._rollout_stats.items()},
                "buffer": [vars(item.to("cpu")) for item in self.buffer.items],
                "nonfinite": self.nonfinite.state_dict()}

    def load_state_dict(self, state: Dict) -> None:
        self.step, self.timestep, self.kl_ctl.value = state["step"], state["timestep"], state["kl_coef"]
        if state["score_moments"] is not None and self.maker.score_moments is not None:
            m = self.maker.score_moments
            m.mean, m.var, m.count = state["score_moments"]["mean"], state["score_moments"]["var"], \
                state["score_moments"]["count"]
        if state["prompts"] is not None:
            self._prompt_iter.load_state_dict(state["prompts"])
        if state["ptx"] is not None and self._ptx_iter is not None:
            self._ptx_iter.load_state_dict(state["ptx"])
        self._rollout_stats = defaultdict(list, {n: [torch.tensor(v) for v in vs]
                                                 for n, vs in state["rollout_stats"].items()})
        device = None if self.buffer.cpu_offload else self.strategy.device
        self.buffer.items = [Experience(**item).to(device) if device else Experience(**item)
                             for item in state["buffer"]]
        self.nonfinite.load_state_dict(state["nonfinite"])

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
                if stopping or (updated and self.save_interval and self.step % self.save_interval == 0):
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
