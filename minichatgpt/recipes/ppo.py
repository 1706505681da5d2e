"""Stage 3 recipe: PPO(-ptx) on prompts (``examples/train_prompts.py``, ``minichatgpt ppo``).

The actor starts from ``--pretrain`` (the SFT model), the critic and reward model from
``--rm_pretrain`` (the trained reward model; ``--rm_path`` may add a state dict saved by
``strategy.save_model``). With LoRA (``--lora_rank > 0``) the reference policy is the actor with its
adapters off and the reward model shares the critic's frozen backbone, so neither needs a copy.
"""

import os
from typing import List, Optional

import torch

from .. import demo
from ..data import PretrainDataset, PromptCollator, PromptDataset, SFTCollator
from ..experience.reward_functions import RolloutScorer
from ..nn import Actor, Critic, RewardModel, is_lora
from ..trainer import PerformanceEvaluator, PPOTrainer
from ..config import ConfigParser, UsageError
from ..trainer.utils import save_pretrained
from .arguments import stage_parser
from .common import Interrupted, build_tokenizer, checkpointing, metrics_logger, report_data, setup
from .configs import PPOConfig
from .reward_config import build_reward_functions

DEMO_PROMPTS = 512


def build_parser() -> ConfigParser:
    """``parse_args`` of this parser returns a :class:`PPOConfig`."""
    return stage_parser("ppo")


def build_models(args: PPOConfig):
    """Actor, critic, reward model and reference model (None when shared with the actor via LoRA).

    Every model is loaded from its directory rather than copied, so this works inside ZeRO-3's
    partitioned ``model_init_context`` too.
    """
    if args.pretrain is None:
        raise ValueError("--pretrain (the SFT model) is required; `minichatgpt pipeline` trains one first")
    lora = dict(lora_rank=args.lora_rank, lora_train_bias=args.lora_train_bias)
    share = args.lora_rank > 0 and not args.no_shared_reference
    rm_source = args.rm_pretrain or args.pretrain
    actor = Actor(pretrained=args.pretrain, checkpoint=args.grad_checkpoint, **lora)
    reference = None if share else Actor(pretrained=args.pretrain)
    critic = Critic(pretrained=rm_source, checkpoint=args.grad_checkpoint, **lora)
    if share and args.lora_train_bias == "none":
        # The critic's frozen base weights and a frozen copy of its head; freezing this module as a
        # whole would also freeze the critic's adapters, which live in the same backbone.
        reward_model = RewardModel.sharing_backbone(critic)
    else:
        reward_model = RewardModel(pretrained=rm_source).requires_grad_(False)
    if reference is not None:
        reference.requires_grad_(False)
    return actor, critic, reward_model, reference


def load_rm_checkpoint(strategy, critic, reward_model, path: str) -> None:
    """``--rm_path``: a reward-model state dict from ``strategy.save_model``, into the RM and the critic."""
    if strategy.unwrap_model(reward_model).use_base_weights:
        raise ValueError("--rm_path cannot be combined with a LoRA critic sharing the reward model's backbone: "
                         "give the reward model as a directory with --rm_pretrain, or pass --no_shared_reference")
    strategy.load_model(reward_model, path)
    if is_lora(strategy.unwrap_model(critic).model):
        raise ValueError(f"--rm_path {path!r} holds plain weights and cannot initialize a LoRA critic; "
                         "give the reward model's directory with --rm_pretrain instead")
    strategy.load_model(critic, path)


def run(args: PPOConfig) -> dict:
    """Train the policy; returns the last PPO metrics and the performance summary."""
    strategy = setup(args, "ppo")
    tokenizer = build_tokenizer(args)
    with strategy.model_init_context():
        actor, critic, reward_model, reference = build_models(args)
    prompts = PromptDataset(args.prompt_path or demo.prompt_records(DEMO_PROMPTS, seed=args.seed + 2), tokenizer,
                            max_len=args.max_input_len, max_datasets_size=args.max_datasets_size,
                            skip_invalid=args.skip_invalid_rows)
    report_data("ppo", "prompts", prompts, args.prompt_path or "the built-in task")
    prompt_loader = strategy.setup_dataloader(prompts, args.experience_batch_size, shuffle=True,
                                              collate_fn=PromptCollator(tokenizer.pad_token_id), seed=args.seed)
    pretrain_loader = None
    if args.pretrain_dataset:
        ptx = PretrainDataset(args.pretrain_dataset, tokenizer, max_len=args.max_len,
                              max_datasets_size=args.max_datasets_size, skip_invalid=args.skip_invalid_rows)
        report_data("ppo", "pretraining (ptx) data", ptx, args.pretrain_dataset)
        pretrain_loader = strategy.setup_dataloader(ptx, args.ptx_batch_size, shuffle=True,
                                                    collate_fn=SFTCollator(tokenizer.pad_token_id), seed=args.seed)

    actor_optim = torch.optim.Adam([p for p in actor.parameters() if p.requires_grad], lr=args.actor_lr)
    critic_optim = torch.optim.Adam([p for p in critic.parameters() if p.requires_grad], lr=args.critic_lr)
    (actor, actor_optim), (critic, critic_optim), reward_model, reference = strategy.prepare(
        (actor, actor_optim), (critic, critic_optim), reward_model, reference)
    if args.rm_path:
        load_rm_checkpoint(strategy, critic, reward_model, args.rm_path)

    performance = PerformanceEvaluator()
    logged = metrics_logger(args, "ppo", strategy)
    checkpoint, resume = checkpointing(args, strategy, "ppo")
    trainer = PPOTrainer(strategy, actor, critic, reward_model, reference, actor_optim, critic_optim,
                         kl_coef=args.kl_coef, ptx_coef=args.ptx_coef, train_batch_size=args.train_batch_size,
                         buffer_limit=args.buffer_limit, eps_clip=args.clip_eps, value_clip=args.value_clip_eps,
                         experience_batch_size=args.experience_batch_size, max_epochs=args.max_epochs,
                         tokenizer=tokenizer, sample_replay_buffer=args.sample_replay_buffer,
                         callbacks=[performance] + ([logged] if logged else []), gamma=args.gamma, lam=args.lam,
                         kl_estimator=args.kl_estimator, score_clip=args.score_clip,
                         normalize_scores=args.normalize_scores, target_kl=args.target_kl,
                         kl_horizon=args.kl_horizon, max_grad_norm=args.max_grad_norm, checkpoint=checkpoint,
                         save_interval=args.save_interval, max_nonfinite_steps=args.max_nonfinite_steps,
                         max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    rewards = build_reward_functions(args)
    if rewards is not None:  # without a trained reward model the functions alone are the reward
        trainer.maker.score_fn = RolloutScorer(rewards, tokenizer, bool(args.rm_pretrain or args.rm_path))
    try:
        metrics = trainer.fit(prompt_loader, pretrain_loader, num_episodes=args.num_episodes,
                              max_timesteps=args.max_timesteps, update_timesteps=args.update_timesteps,
                              resume_from=resume)
    finally:
        if rewards is not None:
            rewards.close()
    if trainer.interrupted:
        raise Interrupted("ppo", trainer.step, trainer.interrupted)
    if args.save_path:
        save_pretrained(strategy, actor, args.save_path, tokenizer)
        save_pretrained(strategy, critic, os.path.join(args.save_path, "critic"), tokenizer)
    return {"metrics": metrics, "performance": performance.summary()}


def main(argv: Optional[List[str]] = None) -> dict:
    """PPO from an SFT model (``--pretrain``). Without one, ``minichatgpt ppo`` trains the built-in SFT and
    reward models first (``recipes.commands.ppo``)."""
    config = build_parser().parse_args(argv)
    if config.pretrain is None:
        raise UsageError("--pretrain (the SFT model) is required; `minichatgpt ppo` without it, or `minichatgpt "
                         "pipeline`, trains the SFT and reward models first")
    return run(config)
