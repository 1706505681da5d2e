"""``minichatgpt pipeline``'s configuration: top-level fields that wire the stages together, one section
per stage, and which stages each ``--algo`` runs."""

import dataclasses
from typing import Dict, List, Optional, Tuple

from ..config import NON_NEGATIVE_INT, POSITIVE_INT, SEED, UsageError, option
from ..functional_rl import ADVANTAGE_ESTIMATORS
from ..log import LEVELS
from ..trainer.strategies import STRATEGY_NAMES
from .configs import REPORT_HELP, TRACKERS, PPOConfig, RMConfig, SFTConfig
from .configs_rl import DPOConfig, GRPOConfig
from .model_flags import ModelFlags

ALGOS = ("ppo", "dpo") + tuple(ADVANTAGE_ESTIMATORS)
# Every section of the pipeline, in the order stages run.
SECTIONS: Dict[str, type] = {"sft": SFTConfig, "rm": RMConfig, "ppo": PPOConfig, "dpo": DPOConfig,
                             "grpo": GRPOConfig}


@dataclasses.dataclass
class PipelineConfig(ModelFlags):
    """``minichatgpt pipeline``: SFT, then the stages ``--algo`` needs, then an evaluation against SFT.

    ppo: SFT -> reward model -> PPO; dpo: SFT -> DPO on the preference pairs; grpo, dr_grpo, rloo,
    reinforce_pp: SFT -> reward model -> the critic-free RL stage. With ``--reward_fn`` the RL stages
    (ppo and the GRPO family) are rewarded by those functions instead, and no reward model is trained.
    The top-level fields wire the stages together and apply to each; a stage's section (YAML) or
    ``--{stage}_args`` sets the rest."""
    algo: str = option("ppo", "the algorithm after SFT", choices=ALGOS)
    reward_fn: List[str] = option(help="reward functions (path/to/file.py:name or package.module:name) for the RL "
                                       "stage instead of a trained reward model", metavar="FN", default_factory=list)
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
    dpo_args: str = option("", "extra flags for the DPO stage")
    grpo_args: str = option("", "extra flags for the GRPO-family stage")
    sft: SFTConfig = option(help="the SFT stage", default_factory=SFTConfig)
    rm: RMConfig = option(help="the reward-model stage", default_factory=RMConfig)
    ppo: PPOConfig = option(help="the PPO stage", default_factory=PPOConfig)
    dpo: DPOConfig = option(help="the DPO stage", default_factory=DPOConfig)
    grpo: GRPOConfig = option(help="the GRPO-family stage", default_factory=GRPOConfig)

    def check(self) -> None:
        super().check()
        if self.reward_fn and self.algo == "dpo":
            raise UsageError("--reward_fn rewards an RL stage; --algo dpo learns from preference pairs only")


def pipeline_stages(algo: str, reward_fn: Optional[List[str]] = None) -> Tuple[str, ...]:
    """The stages ``--algo`` runs, in order: SFT, a reward model unless reward functions replace it (not
    for DPO, which needs none), then the algorithm's own stage."""
    if algo == "dpo":
        return ("sft", "dpo")
    final = "ppo" if algo == "ppo" else "grpo"
    return ("sft", final) if reward_fn else ("sft", "rm", final)
