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

from ..config import (LENGTH, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED, TOP_P, UNIT, Rule,
                      UsageError, option)
from ..log import LEVELS
from ..trainer.configs import PPOTrainerConfig, SupervisedTrainerConfig, TrainingConfig
from ..trainer.strategies import STRATEGY_NAMES
from ..trainer.trackers import TRACKERS
from .model_flags import ModelFlags
from .placement import PPOPlacement, check_placement
from .reward_config import RewardFunctionFields, check_reward_functions

MODEL_FAMILIES = ("auto", "gpt2", "opt", "bloom", "llama")
EVAL_RATIO: Rule = ("a number in [0, 1) (1 would leave nothing to train on)", lambda v: 0 <= v < 1)
SKIP_HELP = "leave out invalid data rows (counted and reported) instead of stopping at the first"
REPORT_HELP = "experiment trackers for the metrics (each needs its package): " + ", ".join(TRACKERS)


@dataclasses.dataclass
class RunConfig(TrainingConfig, ModelFlags):
    """Fields of every stage (the training loop's come from ``TrainingConfig``, precision and model loading
    from ``ModelFlags``)."""
    strategy: str = option("naive", "compute backend; distributed ones run under torchrun", choices=STRATEGY_NAMES)
    model: str = option("auto", "model family; kept for compatibility, the architecture is read from the checkpoint",
                        choices=MODEL_FAMILIES)
    pretrain: Optional[str] = option(None, "hub name, save_pretrained directory or .gguf file; default: the "
                                           "built-in tiny model")
    tokenizer: Optional[str] = option(None, "tokenizer location if not the --pretrain one")
    save_path: Optional[str] = option(None, "output directory (Hugging Face format + tokenizer); a name ending in .pt "
                                            "writes a state dict file (strategy.save_model) instead",
                                      aliases=("output_dir",))
    lora_rank: int = option(0, "> 0 trains LoRA adapters of this rank only", rule=NON_NEGATIVE_INT)
    lora_train_bias: str = option("none", "which biases train with LoRA", choices=("none", "all", "lora_only"))
    grad_checkpoint: bool = option(False, "gradient checkpointing (less memory)")
    max_len: int = option(512, "maximum tokens per training sequence", rule=LENGTH)
    max_datasets_size: Optional[int] = option(None, "use at most this many records", rule=POSITIVE_INT)
    metrics_path: Optional[str] = option(None, "JSONL metrics file (default: SAVE_PATH/metrics.jsonl)")
    tensorboard_dir: Optional[str] = option(None, "also log to TensorBoard there (needs tensorboard)")
    report_to: List[str] = option(help=REPORT_HELP, choices=("none",) + TRACKERS, default_factory=list)
    log_level: str = option("info", "what the run prints: debug also shows the libraries' own messages",
                            choices=LEVELS)
    seed: int = option(42, "seed of weights, data order and sampling", rule=SEED)
    save_total_limit: Optional[int] = option(None, "keep only the newest N checkpoints", rule=POSITIVE_INT)
    resume: Optional[str] = option(None, "continue from a checkpoint: 'auto' takes the newest valid one under "
                                         "SAVE_PATH/checkpoints (or starts afresh when there is none), DIR a "
                                         "checkpoint directory or a directory of them", metavar="auto|DIR")
    skip_invalid_rows: bool = option(False, SKIP_HELP)

    def check(self) -> None:
        super().check()
        if self.resume and not self.save_path:
            raise UsageError(f"--resume {self.resume!r} needs --save_path (checkpoints live in SAVE_PATH/checkpoints)")
        if self.resume and self.resume != "auto" and not os.path.isdir(os.path.expanduser(self.resume)):
            raise UsageError(f"--resume {self.resume!r} is not a directory; give 'auto' or a checkpoint directory")


@dataclasses.dataclass
class SupervisedConfig(RunConfig, SupervisedTrainerConfig):
    """Fields of the stages trained on a fixed dataset with AdamW (SFT, reward model)."""
    dataset: Optional[str] = option(None, "training data file or dataset name; default: the built-in data")
    eval_dataset: Optional[str] = option(None, "held-out data (default: --eval_ratio of --dataset)")
    batch_size: int = option(8, "micro-batch size per process", rule=POSITIVE_INT)
    lr: float = option(2e-5, "peak learning rate (AdamW)", rule=POSITIVE)
    weight_decay: float = option(0.0, "AdamW weight decay", rule=NON_NEGATIVE)
    warmup_ratio: float = option(0.03, "linear warm-up share of all steps", rule=UNIT)
    lr_scheduler: str = option("cosine", "learning-rate schedule after the warm-up (transformers.get_scheduler)",
                               choices=("cosine", "linear", "constant_with_warmup"))
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
class PPOConfig(RunConfig, PPOTrainerConfig, RewardFunctionFields, PPOPlacement):
    """``minichatgpt ppo``: stage 3, PPO(-ptx) on prompts. The algorithm's fields are ``PPOTrainerConfig``'s;
    ``--reward_fn`` adds reward functions to the reward model's score (or replaces it when neither
    --rm_pretrain nor --rm_path is given); where the four models live, ``PPOPlacement``'s."""
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
    ptx_batch_size: int = option(1, "PPO-ptx rows per minibatch", rule=POSITIVE_INT)
    actor_lr: float = option(1e-6, "actor learning rate (Adam)", rule=POSITIVE)
    critic_lr: float = option(1e-5, "critic learning rate (Adam)", rule=POSITIVE)
    max_input_len: int = option(96, "prompt tokens kept (left-truncated)", rule=LENGTH)

    def check(self) -> None:
        super().check()
        check_reward_functions(self)
        check_placement(self)
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
class EvalConfig:
    """``minichatgpt eval``: reward-model accuracy, policy win rates against a baseline, perplexity, data splits."""
    output_dir: str = option("outputs/eval", "where results.json, report.md/.png go")
    reward_model: List[str] = option(help="reward models to score", metavar="[NAME=]DIR", default_factory=list)
    pairs: List[str] = option(help="preference files (any RM data format)", metavar="FILE", default_factory=list)
    subset_column: str = option("subset", "report per value of this field when present")
    max_pairs: Optional[int] = option(None, "use the first N pairs of each file", rule=POSITIVE_INT)
    policy: List[str] = option(help="policies to compare", metavar="[NAME=]DIR", default_factory=list)
    baseline: Optional[str] = option(None, "what each policy is compared with", metavar="[NAME=]DIR")
    prompts: Optional[str] = option(None, "prompts (any PPO prompt format)", metavar="FILE")
    max_prompts: Optional[int] = option(None, "use the first N prompts", rule=POSITIVE_INT)
    judge_rm: Optional[str] = option(None, "gold reward model that picks the winner", metavar="DIR")
    judge_lm: Optional[str] = option(None, "causal LM asked which answer is better (its prompt keeps its last "
                                           "2 x --max_len tokens)", metavar="DIR")
    tie_threshold: float = option(0.0, "a judge margin within +-this is a tie (RM score units, or nats for "
                                       "--judge_lm)", rule=NON_NEGATIVE)
    max_new_tokens: int = option(64, "most tokens per answer", rule=POSITIVE_INT)
    temperature: float = option(1.0, "sampling temperature")
    top_k: int = option(0, "sample from the k most likely tokens (0: all)", rule=NON_NEGATIVE_INT)
    top_p: float = option(1.0, "nucleus sampling mass", rule=TOP_P)
    greedy: bool = option(False, "greedy answers instead of sampling")
    max_input_len: int = option(256, "prompt tokens kept (left-truncated)", rule=LENGTH)
    text: Optional[str] = option(None, "held-out text: {'text'} records or a .txt file", metavar="FILE")
    perplexity_model: List[str] = option(help="models to measure (default: the policies and the baseline)",
                                         metavar="[NAME=]DIR", default_factory=list)
    max_documents: Optional[int] = option(None, "use the first N documents", rule=POSITIVE_INT)
    split: Optional[str] = option(None, "data file to cut into disjoint parts", metavar="FILE")
    split_parts: Optional[str] = option(None, "parts, each a count of records or a share below 1, e.g. "
                                              "proxy=300,gold=0.5", metavar="NAME=SIZE,...")
    max_len: int = option(512, "longest sequence scored, in tokens", rule=LENGTH)
    batch_size: int = option(8, "sequences per forward pass", rule=POSITIVE_INT)
    seed: int = option(42, "seed of the sampled answers", rule=SEED)
    skip_invalid_rows: bool = option(False, "leave out invalid data rows")
    device: str = option("auto", "cpu, cuda, cuda:1... (auto: cuda when available)")
    precision: str = option("fp32", "dtype every model is cast to (weights and activations; scores, log-probs and "
                                    "KL are then taken in float32): bf16 is about 2x faster on CPUs with bf16 "
                                    "matmuls and on GPUs, but rounds away much of a merged LoRA fine-tune's "
                                    "delta (warned)", choices=("fp32", "bf16", "fp16"))
    log_level: str = option("info", "what the run prints", choices=LEVELS)

    def check(self) -> None:
        """Combinations of fields (files and models are checked by the recipe)."""
        if self.judge_rm and self.judge_lm:
            raise UsageError("--judge_rm and --judge_lm exclude each other: give one judge")
        if not self.greedy and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UsageError(f"--temperature must be a finite number > 0 when sampling (or pass --greedy), "
                             f"got {self.temperature!r}")
        if not (self.reward_model or self.pairs or self.policy or self.text or self.split):
            raise UsageError("nothing to evaluate: give --reward_model with --pairs, --policy with --baseline, "
                             "--prompts and a judge, --text, or --split (see minichatgpt eval --help)")
        for flag, value, other, other_value in (("--reward_model", self.reward_model, "--pairs", self.pairs),
                                                ("--split", self.split, "--split_parts", self.split_parts)):
            if bool(value) != bool(other_value):
                given, missing = (flag, other) if value else (other, flag)
                raise UsageError(f"{given} needs {missing}")
        if self.policy:
            for flag in ("baseline", "prompts"):
                if getattr(self, flag) is None:
                    raise UsageError(f"--policy needs --{flag}")
            if self.judge_rm is None and self.judge_lm is None:
                raise UsageError("--policy needs a judge: --judge_rm (a gold reward model) or --judge_lm (a causal LM)")
        if self.text and not (self.perplexity_model or self.policy):
            raise UsageError("--text needs --perplexity_model (or --policy / --baseline, measured by default)")


STAGES: Dict[str, type] = {"sft": SFTConfig, "rm": RMConfig, "ppo": PPOConfig}
# The built-in task's sizes, used by a stage that gets neither --pretrain nor its data flag.
SFT_DEMO: Dict[str, Any] = dict(batch_size=32, lr=1e-3, max_epochs=6, max_len=64, log_interval=20)
RM_DEMO: Dict[str, Any] = dict(batch_size=32, lr=1e-3, max_epochs=5, max_len=64, log_interval=20, eval_ratio=0.1)
PPO_DEMO: Dict[str, Any] = dict(num_episodes=12, max_timesteps=4, update_timesteps=4, experience_batch_size=32,
                                train_batch_size=32, max_epochs=2, max_new_tokens=14, max_input_len=32, actor_lr=5e-5,
                                critic_lr=5e-4, kl_coef=0.05, log_interval=1)
DEMO: Dict[str, Dict[str, Any]] = {"sft": SFT_DEMO, "rm": RM_DEMO, "ppo": PPO_DEMO}
DATA_FIELD = {"sft": "dataset", "rm": "dataset", "ppo": "prompt_path"}
