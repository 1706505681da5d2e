"""Stage 2 recipe: reward-model training (``examples/train_reward_model.py``, ``minichatgpt rm``)."""

import argparse
from functools import partial
from typing import List, Optional

from .. import demo
from ..data import PreferenceCollator, PreferenceDataset
from ..nn import RewardModel
from ..trainer import RewardModelTrainer
from .common import add_common_arguments, add_optim_arguments, parse_with_demo_defaults, run_supervised_stage

DEMO_DEFAULTS = dict(batch_size=32, lr=1e-3, max_epochs=5, max_len=64, log_interval=20, eval_ratio=0.1)
DEMO_SIZE = 3000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    add_common_arguments(parser)
    add_optim_arguments(parser, lr=5e-6)
    parser.add_argument("--dataset", default=None,
                        help="preference pairs: prompt/chosen/rejected, hh-rlhf dialogues, conversations + "
                             "chosen/rejected, instruction + chosen/rejected; default: the built-in pairs")
    parser.add_argument("--eval_dataset", default=None, help="held-out pairs (default: --eval_ratio of --dataset)")
    parser.add_argument("--skip_invalid_rows", action="store_true",
                        help="leave out invalid data rows (counted and reported) instead of stopping at the first")
    parser.add_argument("--loss_fn", default="log_sig", choices=("log_sig", "log_exp"), help="pairwise ranking loss")
    parser.epilog = f"With neither --pretrain nor --dataset the built-in demo runs, with defaults {DEMO_DEFAULTS}."
    return parser


def run(args: argparse.Namespace) -> dict:
    """Train and save; returns the final metrics (pairwise accuracy and margin on held-out pairs)."""
    dataset_cls = partial(PreferenceDataset, skip_invalid=args.skip_invalid_rows)
    return run_supervised_stage(args, "rm", RewardModel, dataset_cls, PreferenceCollator, RewardModelTrainer,
                                lambda: demo.preference_records(DEMO_SIZE, seed=args.seed + 1), loss_fn=args.loss_fn)


def main(argv: Optional[List[str]] = None) -> dict:
    return run(parse_with_demo_defaults(build_parser(), argv, DEMO_DEFAULTS, "dataset"))
