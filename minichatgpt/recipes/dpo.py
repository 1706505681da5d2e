"""DPO-family recipe (``examples/train_dpo.py``, ``minichatgpt dpo``): preference optimization of a
policy, usually the SFT model, on ranked pairs without a reward model."""

from functools import partial
from typing import List, Optional

from .. import demo
from ..config import ConfigParser
from ..data import DPOCollator, PreferenceDataset
from ..nn import Actor
from ..trainer import DPOTrainer
from .arguments import stage_parser
from .common import run_supervised_stage
from .configs_rl import DPOConfig

DEMO_SIZE = 3000


def build_parser() -> ConfigParser:
    """``parse_args`` of this parser returns a :class:`DPOConfig`."""
    return stage_parser("dpo")


def run(args: DPOConfig) -> dict:
    """Train and save; returns the final metrics (held-out loss, implicit-reward accuracy and margin)."""
    dataset_cls = partial(PreferenceDataset, skip_invalid=args.skip_invalid_rows)
    return run_supervised_stage(args, "dpo", Actor, dataset_cls, DPOCollator, DPOTrainer,
                                lambda: demo.preference_records(DEMO_SIZE, seed=args.seed + 1),
                                loss_type=args.loss_type, beta=args.beta, label_smoothing=args.label_smoothing,
                                simpo_gamma=args.simpo_gamma, sft_coef=args.sft_coef, reference=args.reference)


def main(argv: Optional[List[str]] = None) -> dict:
    return run(build_parser().parse_args(argv))
