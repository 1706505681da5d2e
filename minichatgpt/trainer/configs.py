"""The trainers' settings, one dataclass each; the commands' configs extend them with paths and data.

A trainer takes ``config=`` (one of these, or a command's config that extends it) and the keyword
arguments of the original project's constructor, which override the config's fields
(:func:`with_overrides`); old spellings (``eps_clip``) reach the one field (``clip_eps``).
"""

import dataclasses
from typing import Any, Dict, Optional, Tuple, TypeVar

import torch

from ..config import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, TOP_P, UNIT, option
from ..nn.cuda_decode import DECODE_MODES

C = TypeVar("C")
DECODE = ("one of auto, dynamic, static (cuda_graph needs a CUDA device)",
          lambda v: v != "cuda_graph" or torch.cuda.is_available())
DECODE_HELP = ("rollout decode loop: dynamic (finished rows leave the batch), static (a static KV cache), cuda_graph "
               "(static, each step replayed from a CUDA graph; GPU only), auto (cuda_graph on a GPU when the model "
               "supports it, else dynamic)")


@dataclasses.dataclass
class TrainingConfig:
    """The loop settings every trainer has."""
    max_epochs: int = option(1, "passes over the training data (PPO: over the replay buffer per update)",
                             rule=POSITIVE_INT)
    max_grad_norm: float = option(1.0, "gradient clipping (0 disables)", rule=NON_NEGATIVE)
    log_interval: int = option(10, "optimizer steps between logged metrics", rule=POSITIVE_INT)
    save_interval: int = option(0, "write a resumable checkpoint every N optimizer steps (SFT, RM) or PPO updates "
                                   "(PPO); SIGTERM/SIGINT also write one", rule=NON_NEGATIVE_INT)
    max_nonfinite_steps: int = option(5, "stop after this many updates in a row with a non-finite loss or gradient "
                                         "norm", rule=POSITIVE_INT)


@dataclasses.dataclass
class SupervisedTrainerConfig(TrainingConfig):
    """``SFTTrainer`` / ``RewardModelTrainer`` (and the DPO trainer): gradient accumulation on top."""
    accumulation_steps: int = option(1, "micro-batches per optimizer step (the old misspelling is accepted)",
                                     aliases=("accimulation_steps",), rule=POSITIVE_INT)


@dataclasses.dataclass
class PPOTrainerConfig(TrainingConfig):
    """``PPOTrainer``: rewards, GAE, the clipped objectives, the replay buffer and rollout sampling
    (InstructGPT arXiv:2203.02155, PPO arXiv:1707.06347, GAE arXiv:1506.02438)."""
    kl_coef: float = option(0.1, "KL penalty coefficient (initial value with --target_kl)", rule=NON_NEGATIVE)
    target_kl: Optional[float] = option(None, "adaptive KL controller target (per sequence)", rule=POSITIVE)
    kl_horizon: int = option(10000, "adaptive KL controller horizon", rule=POSITIVE_INT)
    kl_estimator: str = option("k1", "KL estimator in the reward", choices=("k1", "k3"))
    ptx_coef: float = option(0.9, "loss = (1 - c) * policy + c * ptx (with pretraining data)", rule=UNIT)
    gamma: float = option(1.0, "GAE discount", rule=UNIT)
    lam: float = option(0.95, "GAE lambda", rule=UNIT)
    clip_eps: float = option(0.2, "PPO ratio clip", aliases=("eps_clip",), rule=POSITIVE)
    value_clip_eps: Optional[float] = option(0.4, "value clip around the old values (none: no clipping)",
                                             aliases=("value_clip",), rule=NON_NEGATIVE)
    score_clip: Optional[float] = option(None, "clip reward-model scores to [-c, c]", rule=POSITIVE)
    normalize_scores: bool = option(False, "running standardization of RM scores")
    train_batch_size: int = option(8, "rows per PPO minibatch", rule=POSITIVE_INT)
    experience_batch_size: int = option(8, "prompts per rollout batch", rule=POSITIVE_INT)
    buffer_limit: int = option(0, "replay buffer size cap (0: none)", rule=NON_NEGATIVE_INT)
    buffer_cpu_offload: bool = option(True, "keep the replay buffer in CPU memory")
    sample_replay_buffer: bool = option(False, "one sampled minibatch per epoch instead of a full pass")
    dataloader_pin_memory: bool = option(True, "pin replay-buffer batches before moving them to the GPU")
    gather_for_generation: bool = option(True, "with sharded parameters (FSDP, ZeRO-3), gather the actor's full "
                                               "weights once per rollout")
    max_new_tokens: int = option(64, "most tokens sampled per response", rule=POSITIVE_INT)
    temperature: float = option(1.0, "sampling temperature")
    top_k: int = option(0, "sample from the k most likely tokens (0: all)", rule=NON_NEGATIVE_INT)
    top_p: float = option(1.0, "nucleus sampling mass", rule=TOP_P)
    greedy: bool = option(False, "greedy rollouts instead of sampling")
    decode: str = option("auto", DECODE_HELP, choices=DECODE_MODES, rule=DECODE)


def _spellings(cls) -> Dict[str, str]:
    names = {}
    for f in dataclasses.fields(cls):
        names[f.name] = f.name
        names.update({alias: f.name for alias in f.metadata.get("aliases", ())})
    return names


def with_overrides(config: Optional[C], cls, overrides: Dict[str, Any], owner: str,
                   passthrough: Tuple[str, ...] = ()) -> Tuple[C, Dict[str, Any]]:
    """``config`` (default ``cls()``) with ``overrides`` applied by field name or old spelling; keys in
    ``passthrough`` are returned apart. Anything else is a TypeError naming ``owner``'s arguments."""
    if config is None:
        config = cls()
    elif not isinstance(config, cls):
        raise TypeError(f"{owner}: config must be a {cls.__name__} (or a command config extending it), got "
                        f"{type(config).__name__}; pass settings such as kl_coef= by keyword")
    names, changes, rest = _spellings(type(config)), {}, {}
    for key, value in overrides.items():
        if key in passthrough:
            rest[key] = value
        elif key in names:
            changes[names[key]] = value
        else:
            raise TypeError(f"{owner} got an unknown argument {key!r}; its settings are the fields of "
                            f"{cls.__name__}" + (f" and {', '.join(passthrough)}" if passthrough else ""))
    return (dataclasses.replace(config, **changes) if changes else config), rest
