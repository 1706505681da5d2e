"""Stage 2 recipe: reward-model training (``examples/train_reward_model.py``, ``minichatgpt rm``)."""

from functools import partial
from typing import List, Optional

from .. import demo
from ..config import ConfigParser
from ..data import PreferenceCollator, PreferenceDataset
from ..nn import RewardModel
from ..trainer import RewardModelTrainer
from .arguments import stage_parser
from .common import run_supervised_stage
from .configs import RMConfig

DEMO_SIZE = 3000


def build_parser() -> ConfigParser:
    """``parse_args`` of this parser returns an :class:`RMConfig`."""
    return stage_parser("rm")


def run(args: RMConfig) -> dict:
    """Train and save; returns the final metrics (pairwise accuracy and margin on held-out pairs)."""
    dataset_cls = partial(PreferenceDataset, skip_invalid=args.skip_invalid_rows)
    return run_supervised_stage(args, "rm", RewardModel, dataset_cls, PreferenceCollator, RewardModelTrainer,
                                lambda: demo.preference_records(DEMO_SIZE, seed=args.seed + 1), loss_fn=args.loss_fn)


def main(argv: Optional[List[str]] = None) -> dict:
    return run(build_parser().parse_args(argv))
