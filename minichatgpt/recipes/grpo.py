"""Critic-free RL recipe (``examples/train_grpo.py``, ``minichatgpt grpo``): GRPO, Dr. GRPO, RLOO or
REINFORCE++ from the SFT model, rewarded by reward functions and/or a reward model. No critic is built."""

from typing import List, Optional

import torch

from ..config import ConfigParser
from ..data import RewardPromptCollator
from ..nn import Actor, RewardModel
from ..trainer.grpo import GRPOTrainer
from ..trainer.utils import save_pretrained
from .arguments import stage_parser
from .common import (Interrupted, build_tokenizer, checkpointing, load_prompts, metrics_logger, model_source,
                     setup)
from .configs_rl import GRPOConfig
from .model_flags import model_options, save_dtype
from .reward_config import build_reward_functions

DEMO_PROMPTS = 1024


def build_parser() -> ConfigParser:
    """``parse_args`` of this parser returns a :class:`GRPOConfig`."""
    return stage_parser("grpo")


def build_models(args: GRPOConfig, tokenizer):
    """Policy, reference (None when LoRA's adapters-off base serves, or without a KL term) and reward model."""
    source, options = model_source(args, tokenizer), model_options(args)
    actor = Actor(**source, checkpoint=args.grad_checkpoint, lora_rank=args.lora_rank,
                  lora_train_bias=args.lora_train_bias, **model_options(args, fully_trained=args.lora_rank == 0))
    reference = None
    if args.kl_coef > 0 and args.lora_rank == 0:
        reference = Actor(**source, **options).requires_grad_(False)
        if "config" in source:  # the built-in model is random: the reference must start from the same weights
            reference.load_state_dict(actor.state_dict())
    reward_model = RewardModel(pretrained=args.rm_pretrain, **options).requires_grad_(False) if args.rm_pretrain \
        else None
    return actor, reference, reward_model


def run(args: GRPOConfig) -> dict:
    """Train the policy and save it; returns the last logged metrics."""
    strategy = setup(args, "grpo")
    tokenizer = build_tokenizer(args)
    with strategy.model_init_context():
        actor, reference, reward_model = build_models(args, tokenizer)
    loader = load_prompts(args, tokenizer, "grpo", RewardPromptCollator, strategy, DEMO_PROMPTS)
    optim = torch.optim.Adam([p for p in actor.parameters() if p.requires_grad], lr=args.actor_lr)
    (actor, optim), reward_model, reference = strategy.prepare((actor, optim), reward_model, reference)
    rewards = build_reward_functions(args)
    logged = metrics_logger(args, "grpo", strategy)
    checkpoint, resume = checkpointing(args, strategy, "grpo")
    trainer = GRPOTrainer(actor, strategy, optim, reward_fn=rewards, reward_model=reward_model,
                          reference_model=reference, tokenizer=tokenizer, algo=args.algo,
                          num_samples_per_prompt=args.num_samples_per_prompt, max_epochs=args.max_epochs,
                          train_batch_size=args.train_batch_size, clip_eps=args.clip_eps, kl_coef=args.kl_coef,
                          kl_mode=args.kl_mode, loss_aggregation=args.loss_aggregation,
                          max_grad_norm=args.max_grad_norm, callbacks=[logged] if logged else [],
                          checkpoint=checkpoint, save_interval=args.save_interval,
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, decode=args.decode)
    try:
        metrics = trainer.fit(loader, num_episodes=args.num_episodes, resume_from=resume)
    finally:
        if rewards is not None:
            rewards.close()
    if trainer.interrupted:
        raise Interrupted("grpo", trainer.step, trainer.interrupted)
    if args.save_path:
        save_pretrained(strategy, actor, args.save_path, tokenizer, dtype=save_dtype(args))
    return metrics


def main(argv: Optional[List[str]] = None) -> dict:
    return run(build_parser().parse_args(argv))
