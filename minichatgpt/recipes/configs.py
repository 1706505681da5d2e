"""The configuration of every training command, one dataclass each: fields, defaults, help and ranges.

``SFTConfig``, ``RMConfig`` and ``PPOConfig`` are the flags of ``minichatgpt sft|rm|ppo`` (and the
example scripts); ``PipelineConfig`` is ``minichatgpt pipeline``, with one section per stage. Every
flag name of the original project's scripts is a field or an alias of one. The built-in task's sizes
(``*_DEMO``) replace the general defaults when a stage gets neither a model nor data.
"""

import dataclasses
import math
import os
from typing import Any, Dict, List, Optional

from ..config import (LENGTH, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED, UNIT, Rule, UsageError,
                      option)
from ..log import LEVELS
from ..trainer.strategies import STRATEGY_NAMES
from ..trainer.trackers import TRACKERS
from .reward_config import RewardFunctionFields, check_reward_functions

MODEL_FAMILIES = ("auto", "gpt2", "opt", "bloom", "llama")
EVAL_RATIO: Rule = ("a number in [0, 1) (1 would leave nothing to train on)", lambda v: 0 <= v < 1)
TOP_P: Rule = ("a number in (0, 1]", lambda v: 0 < v <= 1)
SKIP_HELP = "leave out invalid data rows (counted and reported) instead of stopping at the first"
REPORT_HELP = "experiment trackers for the metrics (each needs its package): " + ", ".join(TRACKERS)


@dataclasses.dataclass
class RunConfig:
    """Fields of every stage."""
    strategy: str = option("naive", "compute backend; distributed ones run under torchrun", choices=STRATEGY_NAMES)
    model: str = option("auto", "model family; kept for compatibility, the architecture is read from the checkpoint",
                        choices=MODEL_FAMILIES)
    pretrain: Optional[str] = option(None, "hub name, save_pretrained directory or .gguf file; default: the "
                                           "built-in tiny model")
    tokenizer: Optional[str] = option(None, "tokenizer location if not the --pretrain one")
    save_path: Optional[str] = option(None, "output directory (Hugging Face format + tokenizer)")
    lora_rank: int = option(0, "> 0 trains LoRA adapters of this rank only", rule=NON_NEGATIVE_INT)
    lora_train_bias: str = option("none", "which biases train with LoRA", choices=("none", "all", "lora_only"))
    grad_checkpoint: bool = option(False, "gradient checkpointing (less memory)")
    max_len: int = option(512, "maximum tokens per training sequence", rule=LENGTH)
    max_datasets_size: Optional[int] = option(None, "use at most this many records", rule=POSITIVE_INT)
    log_interval: int = option(10, "optimizer steps between logged metrics", rule=POSITIVE_INT)
    metrics_path: Optional[str] = option(None, "JSONL metrics file (default: SAVE_PATH/metrics.jsonl)")
    tensorboard_dir: Optional[str] = option(None, "also log to TensorBoard there (needs tensorboard)")
    report_to: List[str] = option(help=REPORT_HELP, choices=("none",) + TRACKERS, default_factory=list)
    log_level: str = option("info", "what the run prints: debug also shows the libraries' own messages",
                            choices=LEVELS)
    seed: int = option(42, "seed of weights, data order and sampling", rule=SEED)
    save_interval: int = option(0, "write a resumable checkpoint (SAVE_PATH/checkpoints) every N optimizer steps "
                                   "(SFT, RM) or PPO updates (PPO); SIGTERM/SIGINT also write one",
                                rule=NON_NEGATIVE_INT)
    save_total_limit: Optional[int] = option(None, "keep only the newest N checkpoints", rule=POSITIVE_INT)
    resume: Optional[str] = option(None, "continue from a checkpoint: 'auto' takes the newest valid one under "
                                         "SAVE_PATH/checkpoints (or starts afresh when there is none), DIR a "
                                         "checkpoint directory or a directory of them", metavar="auto|DIR")
    max_nonfinite_steps: int = option(5, "stop after this many updates in a row with a non-finite loss or "
                                         "gradient norm", rule=POSITIVE_INT)
    skip_invalid_rows: bool = option(False, SKIP_HELP)

    def check(self) -> None:
        if self.resume and not self.save_path:
            raise UsageError(f"--resume {self.resume!r} needs --save_path (checkpoints live in SAVE_PATH/checkpoints)")
        if self.resume and self.resume != "auto" and not os.path.isdir(os.path.expanduser(self.resume)):
            raise UsageError(f"--resume {self.resume!r} is not a directory; give 'auto' or a checkpoint directory")


@dataclasses.dataclass
class SupervisedConfig(RunConfig):
    """Fields of the stages trained on a fixed dataset with AdamW (SFT, reward model)."""
    dataset: Optional[str] = option(None, "training data file or dataset name; default: the built-in data")
    eval_dataset: Optional[str] = option(None, "held-out data (default: --eval_ratio of --dataset)")
    batch_size: int = option(8, "micro-batch size per process", rule=POSITIVE_INT)
    accumulation_steps: int = option(1, "micro-batches per optimizer step (the old misspelling is accepted)",
                                     aliases=("accimulation_steps",), rule=POSITIVE_INT)
    lr: float = option(2e-5, "peak learning rate (AdamW)", rule=POSITIVE)
    weight_decay: float = option(0.0, "AdamW weight decay", rule=NON_NEGATIVE)
    warmup_ratio: float = option(0.03, "linear warm-up share of all steps", rule=UNIT)
    max_grad_norm: float = option(1.0, "gradient clipping (0 disables)", rule=NON_NEGATIVE)
    max_epochs: int = option(1, "passes over the training data", rule=POSITIVE_INT)
    eval_ratio: float = option(0.05, "share of the dataset held out for evaluation when --eval_dataset is not given",
                               rule=EVAL_RATIO)


@dataclasses.dataclass
class SFTConfig(SupervisedConfig):
    """``minichatgpt sft``: stage 1, supervised fine-tuning."""
    dataset: Optional[str] = option(None, "SFT data: Alpaca json, prompt/completion jsonl, chat (messages/"
                                          "conversations), csv, parquet, .gz, or a dataset name; default: the "
                                          "built-in demonstrations")


@dataclasses.dataclass
class RMConfig(SupervisedConfig):
    """``minichatgpt rm``: stage 2, reward-model training on ranked pairs."""
    dataset: Optional[str] = option(None, "preference pairs: prompt/chosen/rejected, hh-rlhf dialogues, "
                                          "conversations + chosen/rejected, instruction + chosen/rejected; "
                                          "default: the built-in pairs")
    lr: float = option(5e-6, "peak learning rate (AdamW)", rule=POSITIVE)
    loss_fn: str = option("log_sig", "pairwise ranking loss", choices=("log_sig", "log_exp"))


@dataclasses.dataclass
class PPOConfig(RunConfig, RewardFunctionFields):
    """``minichatgpt ppo``: stage 3, PPO(-ptx) on prompts; ``--reward_fn`` adds reward functions to the reward
    model's score (or replaces it when neither --rm_pretrain nor --rm_path is given)."""
    prompt_path: Optional[str] = option(None, "prompts (instruction/prompt/messages fields, or hh-rlhf "
                                              "dialogues); default: built-in")
    pretrain_dataset: Optional[str] = option(None, "PPO-ptx data ({'text'} records or SFT formats)")
    rm_pretrain: Optional[str] = option(None, "reward model / critic start (default: --pretrain)")
    rm_model: str = option("auto", "reward model family; kept for compatibility")
    rm_path: Optional[str] = option(None, "reward-model state dict (.pt/.safetensors) to load")
    no_shared_reference: bool = option(False, "with LoRA, keep a separate reference model and reward model anyway")
    num_episodes: int = option(10, "passes of --max_timesteps prompt batches", rule=POSITIVE_INT)
    max_timesteps: int = option(10, "prompt batches per episode", rule=POSITIVE_INT)
    update_timesteps: int = option(10, "prompt batches between PPO updates", rule=POSITIVE_INT)
    max_epochs: int = option(5, "passes over the replay buffer per update", rule=POSITIVE_INT)
    train_batch_size: int = option(8, "rows per PPO minibatch", rule=POSITIVE_INT)
    experience_batch_size: int = option(8, "prompts per rollout batch", rule=POSITIVE_INT)
    ptx_batch_size: int = option(1, "PPO-ptx rows per minibatch", rule=POSITIVE_INT)
    ptx_coef: float = option(0.9, "loss = (1 - c) * policy + c * ptx", rule=UNIT)
    kl_coef: float = option(0.1, "KL penalty coefficient (initial value with --target_kl)", rule=NON_NEGATIVE)
    target_kl: Optional[float] = option(None, "adaptive KL controller target (per sequence)", rule=POSITIVE)
    kl_horizon: int = option(10000, "adaptive KL controller horizon", rule=POSITIVE_INT)
    kl_estimator: str = option("k1", "KL estimator in the reward", choices=("k1", "k3"))
    gamma: float = option(1.0, "GAE discount", rule=UNIT)
    lam: float = option(0.95, "GAE lambda", rule=UNIT)
    clip_eps: float = option(0.2, "PPO ratio clip", aliases=("eps_clip",), rule=POSITIVE)
    value_clip_eps: float = option(0.4, "value clip around the old values", aliases=("value_clip",),
                                   rule=NON_NEGATIVE)
    score_clip: Optional[float] = option(None, "clip reward-model scores to [-c, c]", rule=POSITIVE)
    normalize_scores: bool = option(False, "running standardization of RM scores")
    actor_lr: float = option(1e-6, "actor learning rate (Adam)", rule=POSITIVE)
    critic_lr: float = option(1e-5, "critic learning rate (Adam)", rule=POSITIVE)
    max_grad_norm: float = option(1.0, "gradient clipping (0 disables)", rule=NON_NEGATIVE)
    max_input_len: int = option(96, "prompt tokens kept (left-truncated)", rule=LENGTH)
    max_new_tokens: int = option(64, "most tokens sampled per response", rule=POSITIVE_INT)
    temperature: float = option(1.0, "sampling temperature")
    top_k: int = option(0, "sample from the k most likely tokens (0: all)", rule=NON_NEGATIVE_INT)
    top_p: float = option(1.0, "nucleus sampling mass", rule=TOP_P)
    greedy: bool = option(False, "greedy rollouts instead of sampling")
    buffer_limit: int = option(0, "replay buffer size cap (0: none)", rule=NON_NEGATIVE_INT)
    sample_replay_buffer: bool = option(False, "one sampled minibatch per epoch instead of a full pass")

    def check(self) -> None:
        super().check()
        check_reward_functions(self)
        if not self.greedy and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UsageError(f"--temperature must be a finite number > 0 when sampling (or pass --greedy), "
                             f"got {self.temperature!r}")
        total = self.num_episodes * self.max_timesteps
        if self.update_timesteps > total:
            raise UsageError(f"--update_timesteps {self.update_timesteps} is more than the {total} timesteps of the "
                             f"whole run (--num_episodes {self.num_episodes} x --max_timesteps {self.max_timesteps}): "
                             "no PPO update would ever run")
        if self.rm_path and self.lora_rank > 0:
            raise UsageError(f"--rm_path {self.rm_path!r} holds plain weights and cannot initialize a LoRA critic "
                             f"(--lora_rank {self.lora_rank}); give the reward model's save_pretrained directory "
                             "with --rm_pretrain instead")


@dataclasses.dataclass
class PipelineConfig:
    """``minichatgpt pipeline``: SFT -> reward model -> PPO -> evaluation. The top-level fields wire the
    stages together and apply to each; a stage's section (YAML) or ``--{stage}_args`` sets the rest."""
    output_dir: str = option("outputs/pipeline", "where the stages' directories, metrics and summary go")
    pretrain: Optional[str] = option(None, "starting model (default: the built-in tiny model)")
    sft_dataset: Optional[str] = option(None, "SFT data (default: the built-in demonstrations)")
    rm_dataset: Optional[str] = option(None, "preference pairs (default: the built-in pairs)")
    prompt_dataset: Optional[str] = option(None, "PPO prompts (default: the built-in prompts)")
    strategy: str = option("naive", "compute backend of every stage", choices=STRATEGY_NAMES)
    lora_rank: int = option(0, "LoRA rank of the SFT and PPO stages (0: full fine-tuning)", rule=NON_NEGATIVE_INT)
    seed: int = option(42, "seed of every stage", rule=SEED)
    eval_prompts: int = option(256, "held-out prompts for the final evaluation", rule=POSITIVE_INT)
    skip_invalid_rows: bool = option(False, "every stage leaves out invalid data rows (counted and reported)")
    report_to: List[str] = option(help=REPORT_HELP, choices=("none",) + TRACKERS, default_factory=list)
    log_level: str = option("info", "what the run prints (debug: the libraries' messages too)", choices=LEVELS)
    save_interval: int = option(0, "every stage writes a resumable checkpoint every N steps", rule=NON_NEGATIVE_INT)
    save_total_limit: Optional[int] = option(None, "keep the newest N checkpoints per stage", rule=POSITIVE_INT)
    resume: bool = option(False, "continue an interrupted pipeline in OUTPUT_DIR: finished stages are skipped and "
                                 "the interrupted one resumes from its newest checkpoint")
    sft_args: str = option("", "extra flags for the SFT stage, e.g. \"--max_epochs 2\" (same as its YAML section)")
    rm_args: str = option("", "extra flags for the reward-model stage")
    ppo_args: str = option("", "extra flags for the PPO stage")
    sft: SFTConfig = option(help="the SFT stage", default_factory=SFTConfig)
    rm: RMConfig = option(help="the reward-model stage", default_factory=RMConfig)
    ppo: PPOConfig = option(help="the PPO stage", default_factory=PPOConfig)


STAGES: Dict[str, type] = {"sft": SFTConfig, "rm": RMConfig, "ppo": PPOConfig}
# The built-in task's sizes, used by a stage that gets neither --pretrain nor its data flag.
SFT_DEMO: Dict[str, Any] = dict(batch_size=32, lr=1e-3, max_epochs=6, max_len=64, log_interval=20)
RM_DEMO: Dict[str, Any] = dict(batch_size=32, lr=1e-3, max_epochs=5, max_len=64, log_interval=20, eval_ratio=0.1)
PPO_DEMO: Dict[str, Any] = dict(num_episodes=12, max_timesteps=4, update_timesteps=4, experience_batch_size=32,
                                train_batch_size=32, max_epochs=2, max_new_tokens=14, max_input_len=32, actor_lr=5e-5,
                                critic_lr=5e-4, kl_coef=0.05, log_interval=1)
DEMO: Dict[str, Dict[str, Any]] = {"sft": SFT_DEMO, "rm": RM_DEMO, "ppo": PPO_DEMO}
DATA_FIELD = {"sft": "dataset", "rm": "dataset", "ppo": "prompt_path"}
