"""Where the RL stages' models live, with DeepSpeed-Chat's flags: ``--actor_zero_stage`` and
``--critic_zero_stage`` (each trained engine's own ZeRO stage under the deepspeed_* strategies) and
``--offload_reference_model`` (the frozen reference and reward models kept in CPU memory between their
forwards), their up-front check, and the strategy options they turn into.

The fields are ``ActorPlacement`` (``minichatgpt grpo``: one trained model) and ``PPOPlacement`` (``minichatgpt
ppo`` and the pipeline's PPO section: actor and critic); ``strategy_options`` passes them to ``build_strategy``
as ``pair_stages`` (DeepSpeed) and ``offload_frozen`` (every CPU-capable strategy).
"""

import dataclasses
from typing import Optional

from ..config import UsageError, option
from ..trainer.strategies.deepspeed_options import ZERO_STAGES

STAGE_HELP = ("ZeRO stage (1-3) of the {} engine under the deepspeed_* strategies; default: the strategy's "
              "(deepspeed_zeroN). Stage 3 partitions its parameters too")
OFFLOAD_HELP = ("keep the frozen reference and reward models in CPU memory and move them to the device only for "
                "their forward (naive, ddp; fsdp: CPU-offloaded shards; deepspeed_*: ZeRO-3 inference engines with "
                "parameter offload, as DeepSpeed-Chat does)")


@dataclasses.dataclass
class ActorPlacement:
    """Placement fields of an RL stage with one trained model (the policy)."""
    actor_zero_stage: Optional[int] = option(None, STAGE_HELP.format("actor (policy)"), choices=ZERO_STAGES)
    offload_reference_model: bool = option(False, OFFLOAD_HELP)


@dataclasses.dataclass
class PPOPlacement(ActorPlacement):
    """PPO's placement fields: the critic is trained too."""
    critic_zero_stage: Optional[int] = option(None, STAGE_HELP.format("critic"), choices=ZERO_STAGES)


def _stage_flags(args) -> dict:
    return {name: getattr(args, name) for name in ("actor_zero_stage", "critic_zero_stage")
            if getattr(args, name, None) is not None}


def _frozen_models(args) -> bool:
    """Whether the stage builds a frozen model of its own to offload (see ``recipes.ppo.reference_choice`` and
    ``recipes.grpo.build_models``): with LoRA the reference is the actor's base and PPO's reward model shares
    the critic's, so nothing would move."""
    if hasattr(args, "critic_zero_stage"):  # PPO
        return args.lora_rank == 0 or args.no_shared_reference or args.lora_train_bias != "none"
    reference = args.kl_coef > 0 and args.lora_rank == 0
    return reference or bool(args.rm_pretrain)


def check_placement(args) -> None:
    """UsageError, naming the flag, for a placement the strategy cannot give."""
    strategy = args.strategy or ""
    for flag, stage in _stage_flags(args).items():
        if not strategy.startswith("deepspeed"):
            raise UsageError(f"--{flag} {stage} picks a DeepSpeed ZeRO stage and applies to the deepspeed_* strategies "
                             f"only, not --strategy {strategy}: use e.g. --strategy deepspeed_zero2 --{flag} {stage}")
    if not getattr(args, "offload_reference_model", False):
        return
    if strategy.startswith("colossalai"):
        raise UsageError(f"--offload_reference_model is not supported with --strategy {strategy}; use naive, ddp, fsdp "
                         "or deepspeed_*")
    if not _frozen_models(args):
        if hasattr(args, "critic_zero_stage"):
            why = (f"with LoRA (--lora_rank {args.lora_rank}) the reference policy is the actor with its adapters off "
                   "and the reward model shares the critic's weights; pass --no_shared_reference to keep copies")
        else:
            why = ("the reference policy is the actor with its LoRA adapters off (or --kl_coef 0 needs none) and "
                   "no --rm_pretrain gives a reward model")
        raise UsageError(f"--offload_reference_model has nothing to offload: {why}, or drop --offload_reference_model")


def placement_options(args) -> dict:
    """``build_strategy`` keyword arguments: ``pair_stages`` in ``prepare``'s order of trained models (actor, then
    critic) and ``offload_frozen``."""
    options = {}
    if _stage_flags(args):
        names = ("actor_zero_stage", "critic_zero_stage") if hasattr(args, "critic_zero_stage") else \
            ("actor_zero_stage",)
        options["pair_stages"] = tuple(getattr(args, name) for name in names)
    if getattr(args, "offload_reference_model", False):
        options["offload_frozen"] = True
    return options
