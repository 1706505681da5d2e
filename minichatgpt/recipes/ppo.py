"""Stage 3 recipe: PPO(-ptx) on prompts (``examples/train_prompts.py``, ``minichatgpt ppo``).

The actor starts from ``--pretrain`` (the SFT model), the critic and reward model from
``--rm_pretrain`` (the trained reward model; ``--rm_path`` may add a state dict saved by
``strategy.save_model``). With LoRA (``--lora_rank > 0``) the reference policy is the actor with its
adapters off and the reward model shares the critic's frozen backbone, so neither needs a copy.
"""

import argparse
import os
import shlex
import sys
from typing import List, Optional

import torch

from .. import demo
from ..data import PretrainDataset, PromptCollator, PromptDataset, SFTCollator
from ..nn import Actor, Critic, RewardModel, is_lora
from ..trainer import PerformanceEvaluator, PPOTrainer
from ..trainer.utils import save_pretrained
from .common import (Interrupted, add_common_arguments, build_tokenizer, checkpointing, metrics_logger,
                     parse_with_demo_defaults, setup)
from .model_flags import model_options, save_dtype

DEMO_DEFAULTS = dict(num_episodes=12, max_timesteps=4, update_timesteps=4, experience_batch_size=32,
                     train_batch_size=32, max_epochs=2, max_new_tokens=14, max_input_len=32, actor_lr=5e-5,
                     critic_lr=5e-4, kl_coef=0.05, log_interval=1)
DEMO_PROMPTS = 512


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(description=__doc__)
    add_common_arguments(parser)
    parser.add_argument("--prompt_path", default=None,
                        help="prompts (instruction/prompt/messages fields, or hh-rlhf dialogues); default: built-in")
    parser.add_argument("--pretrain_dataset", default=None, help="PPO-ptx data ({'text'} records or SFT formats)")
    parser.add_argument("--skip_invalid_rows", action="store_true",
                        help="leave out invalid data rows (counted and reported) instead of stopping at the first")
    parser.add_argument("--rm_pretrain", default=None, help="reward model / critic start (default: --pretrain)")
    parser.add_argument("--rm_model", default="auto", help="reward model family; kept for compatibility")
    parser.add_argument("--rm_path", default=None, help="reward-model state dict (.pt/.safetensors) to load")
    parser.add_argument("--no_shared_reference", action="store_true",
                        help="with LoRA, keep a separate reference model and reward model anyway")
    parser.add_argument("--num_episodes", type=int, default=10)
    parser.add_argument("--max_timesteps", type=int, default=10, help="prompt batches per episode")
    parser.add_argument("--update_timesteps", type=int, default=10, help="prompt batches between PPO updates")
    parser.add_argument("--max_epochs", type=int, default=5, help="passes over the replay buffer per update")
    parser.add_argument("--train_batch_size", type=int, default=8)
    parser.add_argument("--experience_batch_size", type=int, default=8, help="prompts per rollout batch")
    parser.add_argument("--ptx_batch_size", type=int, default=1)
    parser.add_argument("--ptx_coef", type=float, default=0.9, help="loss = (1 - c) * policy + c * ptx")
    parser.add_argument("--kl_coef", type=float, default=0.1)
    parser.add_argument("--target_kl", type=float, default=None, help="adaptive KL controller target (per sequence)")
    parser.add_argument("--kl_horizon", type=int, default=10000)
    parser.add_argument("--kl_estimator", default="k1", choices=("k1", "k3"))
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--lam", type=float, default=0.95)
    parser.add_argument("--eps_clip", type=float, default=0.2)
    parser.add_argument("--value_clip", type=float, default=0.4)
    parser.add_argument("--score_clip", type=float, default=None)
    parser.add_argument("--normalize_scores", action="store_true", help="running standardization of RM scores")
    parser.add_argument("--actor_lr", type=float, default=1e-6)
    parser.add_argument("--critic_lr", type=float, default=1e-5)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--max_input_len", type=int, default=96, help="prompt tokens kept (left-truncated)")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--greedy", action="store_true", help="greedy rollouts instead of sampling")
    parser.add_argument("--buffer_limit", type=int, default=0)
    parser.add_argument("--sample_replay_buffer", action="store_true")
    parser.epilog = f"With neither --pretrain nor --prompt_path the built-in demo runs, with defaults {DEMO_DEFAULTS}."
    return parser


def build_models(args: argparse.Namespace):
    """Actor, critic, reward model and reference model (None when shared with the actor via LoRA).

    Every model is loaded from its directory rather than copied, so this works inside ZeRO-3's
    partitioned ``model_init_context`` too. ``--grad_checkpoint``, ``--attn_implementation`` and
    ``--trust_remote_code`` apply to all four (checkpointing only acts where gradients flow).
    """
    if args.pretrain is None:
        raise ValueError("--pretrain (the SFT model) is required; `minichatgpt pipeline` trains one first")
    lora = dict(lora_rank=args.lora_rank, lora_train_bias=args.lora_train_bias)
    options = dict(checkpoint=args.grad_checkpoint, **model_options(args))
    trained = dict(options, **model_options(args, fully_trained=args.lora_rank == 0), **lora)
    share = args.lora_rank > 0 and not args.no_shared_reference
    rm_source = args.rm_pretrain or args.pretrain
    actor = Actor(pretrained=args.pretrain, **trained)
    reference = None if share else Actor(pretrained=args.pretrain, **options)
    critic = Critic(pretrained=rm_source, **trained)
    if share and args.lora_train_bias == "none":
        # The critic's frozen base weights and a frozen copy of its head; freezing this module as a
        # whole would also freeze the critic's adapters, which live in the same backbone.
        reward_model = RewardModel.sharing_backbone(critic)
    else:
        reward_model = RewardModel(pretrained=rm_source, **options).requires_grad_(False)
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


def run(args: argparse.Namespace) -> dict:
    """Train the policy; returns the last PPO metrics and the performance summary."""
    strategy = setup(args)
    tokenizer = build_tokenizer(args)
    with strategy.model_init_context():
        actor, critic, reward_model, reference = build_models(args)
    prompts = PromptDataset(args.prompt_path or demo.prompt_records(DEMO_PROMPTS, seed=args.seed + 2), tokenizer,
                            max_len=args.max_input_len, max_datasets_size=args.max_datasets_size,
                            skip_invalid=args.skip_invalid_rows)
    prompt_loader = strategy.setup_dataloader(prompts, args.experience_batch_size, shuffle=True,
                                              collate_fn=PromptCollator(tokenizer.pad_token_id), seed=args.seed)
    pretrain_loader = None
    if args.pretrain_dataset:
        ptx = PretrainDataset(args.pretrain_dataset, tokenizer, max_len=args.max_len,
                              max_datasets_size=args.max_datasets_size, skip_invalid=args.skip_invalid_rows)
        pretrain_loader = strategy.setup_dataloader(ptx, args.ptx_batch_size, shuffle=True,
                                                    collate_fn=SFTCollator(tokenizer.pad_token_id), seed=args.seed)

    actor_optim = torch.optim.Adam([p for p in actor.parameters() if p.requires_grad], lr=args.actor_lr)
    critic_optim = torch.optim.Adam([p for p in critic.parameters() if p.requires_grad], lr=args.critic_lr)
    (actor, actor_optim), (critic, critic_optim), reward_model, reference = strategy.prepare(
        (actor, actor_optim), (critic, critic_optim), reward_model, reference)
    if args.rm_path:
        load_rm_checkpoint(strategy, critic, reward_model, args.rm_path)

    performance = PerformanceEvaluator()
    logger = metrics_logger(args, "ppo")
    checkpoint, resume = checkpointing(args, strategy, "ppo")
    trainer = PPOTrainer(strategy, actor, critic, reward_model, reference, actor_optim, critic_optim,
                         kl_coef=args.kl_coef, ptx_coef=args.ptx_coef, train_batch_size=args.train_batch_size,
                         buffer_limit=args.buffer_limit, eps_clip=args.eps_clip, value_clip=args.value_clip,
                         experience_batch_size=args.experience_batch_size, max_epochs=args.max_epochs,
                         tokenizer=tokenizer, sample_replay_buffer=args.sample_replay_buffer,
                         callbacks=[performance] + ([logger] if logger else []), gamma=args.gamma, lam=args.lam,
                         kl_estimator=args.kl_estimator, score_clip=args.score_clip,
                         normalize_scores=args.normalize_scores, target_kl=args.target_kl,
                         kl_horizon=args.kl_horizon, max_grad_norm=args.max_grad_norm, checkpoint=checkpoint,
                         save_interval=args.save_interval, max_nonfinite_steps=args.max_nonfinite_steps,
                         max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    metrics = trainer.fit(prompt_loader, pretrain_loader, num_episodes=args.num_episodes,
                          max_timesteps=args.max_timesteps, update_timesteps=args.update_timesteps,
                          resume_from=resume)
    if trainer.interrupted:
        raise Interrupted("ppo", trainer.step, trainer.interrupted)
    if args.save_path:
        save_pretrained(strategy, actor, args.save_path, tokenizer, dtype=save_dtype(args))
        save_pretrained(strategy, critic, os.path.join(args.save_path, "critic"), tokenizer, dtype=save_dtype(args))
    return {"metrics": metrics, "performance": performance.summary()}


def main(argv: Optional[List[str]] = None) -> dict:
    parser = build_parser()
    args = parse_with_demo_defaults(parser, argv, DEMO_DEFAULTS, "prompt_path")
    if args.pretrain is None:
        # No SFT model given: train the built-in SFT and reward models first, as the pipeline does, and run
        # this stage with the flags given here.
        from .pipeline import main as pipeline_main

        pipeline_flags = {"--save_path": "--output_dir", "--seed": "--seed", "--strategy": "--strategy",
                          "--prompt_path": "--prompt_dataset", "--lora_rank": "--lora_rank",
                          "--precision": "--precision", "--save_dtype": "--save_dtype",
                          "--attn_implementation": "--attn_implementation",
                          "--deepspeed_config": "--deepspeed_config"}
        mapped, rest = _split_flags(parser, sys.argv[1:] if argv is None else argv, pipeline_flags)
        mapped.setdefault("--output_dir", "outputs/pipeline")
        return pipeline_main([item for flag, value in mapped.items() for item in (flag, value)]
                             + ["--ppo_args", shlex.join(rest)])
    return run(args)


def _split_flags(parser: argparse.ArgumentParser, argv: List[str], renames: dict):
    """``argv`` split into the flags named in ``renames`` ({renamed flag: value}) and all the others."""
    mapped, rest, i = {}, [], 0
    while i < len(argv):
        flag, _, inline = argv[i].partition("=")
        action = parser._option_string_actions.get(flag)
        takes_value = action is not None and action.nargs != 0
        value = inline if inline or not takes_value else (argv[i + 1] if i + 1 < len(argv) else "")
        step = 2 if takes_value and not inline else 1
        if action is not None and action.option_strings[0] in renames:
            mapped[renames[action.option_strings[0]]] = value
        else:
            rest.extend(argv[i:i + step])
        i += step
    return mapped, rest
