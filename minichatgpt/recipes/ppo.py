"""Stage 3 recipe: PPO(-ptx) on prompts (``examples/train_prompts.py``, ``minichatgpt ppo``).

The actor starts from ``--pretrain`` (the SFT model), the critic and reward model from
``--rm_pretrain`` (the trained reward model; ``--rm_path`` may add a state dict saved by
``strategy.save_model``). With LoRA (``--lora_rank > 0``) the reference policy is the actor with its
adapters off and the reward model shares the critic's frozen backbone, so neither needs a copy.
"""

import os
from typing import List, Optional, Tuple

import torch

from ..data import PretrainDataset, PromptCollator, SFTCollator
from ..experience.reward_functions import RolloutScorer
from ..nn import Actor, Critic, RewardModel, is_lora
from ..trainer import PerformanceEvaluator, PPOTrainer
from ..config import ConfigParser, UsageError
from ..trainer.utils import save_pretrained
from .arguments import stage_parser
from ..log import get_logger
from .common import Interrupted, build_tokenizer, checkpointing, load_prompts, metrics_logger, report_data, setup
from .configs import PPOConfig
from .model_flags import model_options, save_dtype
from .path_checks import saves_state_dict
from .reward_config import build_reward_functions

DEMO_PROMPTS = 512
logger = get_logger(__name__)


def build_parser() -> ConfigParser:
    """``parse_args`` of this parser returns a :class:`PPOConfig`."""
    return stage_parser("ppo")


def reference_choice(args: PPOConfig) -> Tuple[bool, str]:
    """Whether the actor (adapters off) can serve as the reference policy, and a sentence for the log.

    Only when nothing but adapters trains: trained base biases (``--lora_train_bias`` all /
    lora_only) would move a shared reference, so a frozen copy is kept then.
    """
    if args.lora_rank <= 0:
        return False, "reference policy: a frozen copy of --pretrain"
    if args.no_shared_reference:
        return False, "reference policy: a frozen copy of --pretrain (--no_shared_reference)"
    if args.lora_train_bias != "none":
        return False, (f"reference policy: a frozen copy of --pretrain, since --lora_train_bias "
                       f"{args.lora_train_bias} trains base biases that a shared reference would carry along")
    return True, "reference policy: the actor with its LoRA adapters off (shared weights)"


def build_models(args: PPOConfig):
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
    share, _ = reference_choice(args)
    rm_source = args.rm_pretrain or args.pretrain
    actor = Actor(pretrained=args.pretrain, **trained)
    reference = None if share else Actor(pretrained=args.pretrain, **options)
    critic = Critic(pretrained=rm_source, **trained)
    if share:
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


def run(args: PPOConfig) -> dict:
    """Train the policy; returns the last PPO metrics and the performance summary."""
    strategy = setup(args, "ppo")
    tokenizer = build_tokenizer(args)
    with strategy.model_init_context():
        actor, critic, reward_model, reference = build_models(args)
    logger.info(reference_choice(args)[1])
    prompt_loader = load_prompts(args, tokenizer, "ppo", PromptCollator, strategy, DEMO_PROMPTS)
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
    trainer = PPOTrainer(strategy, actor, critic, reward_model, reference, actor_optim, critic_optim, config=args,
                         tokenizer=tokenizer, callbacks=[performance] + ([logged] if logged else []),
                         checkpoint_manager=checkpoint)
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
    if saves_state_dict(args.save_path):  # the original project's actor_checkpoint_prompts.pt
        strategy.save_model(actor, args.save_path, only_rank0=True)
    elif args.save_path:
        save_pretrained(strategy, actor, args.save_path, tokenizer, dtype=save_dtype(args))
        save_pretrained(strategy, critic, os.path.join(args.save_path, "critic"), tokenizer, dtype=save_dtype(args))
    return {"metrics": metrics, "performance": performance.summary()}


def main(argv: Optional[List[str]] = None) -> dict:
    """PPO from an SFT model (``--pretrain``). Without one, ``minichatgpt ppo`` trains the built-in SFT and
    reward models first (``recipes.commands.ppo``)."""
    config = build_parser().parse_args(argv)
    if config.pretrain is None:
        raise UsageError("--pretrain (the SFT model) is required; `minichatgpt ppo` without it, or `minichatgpt "
                         "pipeline`, trains the SFT and reward models first")
    return run(config)
