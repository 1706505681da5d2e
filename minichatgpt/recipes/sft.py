"""Stage 1 recipe: supervised fine-tuning (``examples/train_sft.py``, ``minichatgpt sft``)."""

import argparse
from functools import partial
from typing import List, Optional

from .. import demo
from ..data import SFTCollator, SFTDataset
from ..nn import LM
from ..trainer import SFTTrainer
from .common import add_common_arguments, add_optim_arguments, parse_with_demo_defaults, run_supervised_stage

# Used for the built-in demo (no --pretrain, no --dataset) unless the flag is given explicitly.
DEMO_DEFAULTS = dict(batch_size=32, lr=1e-3, max_epochs=6, max_len=64, log_interval=20)
DEMO_SIZE = 3000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    add_common_arguments(parser)
    add_optim_arguments(parser, lr=2e-5)
    parser.add_argument("--dataset", default=None,
                        help="SFT data: Alpaca json, prompt/completion jsonl, chat (messages/conversations), csv, "
                             "parquet, .gz, or a dataset name; default: the built-in demonstrations")
    parser.add_argument("--eval_dataset", default=None, help="held-out data (default: --eval_ratio of --dataset)")
    parser.add_argument("--skip_invalid_rows", action="store_true",
                        help="leave out invalid data rows (counted and reported) instead of stopping at the first")
    parser.epilog = f"With neither --pretrain nor --dataset the built-in demo runs, with defaults {DEMO_DEFAULTS}."
    return parser


def run(args: argparse.Namespace) -> dict:
    """Train and save; returns the final metrics (training loss, eval loss and perplexity)."""
    dataset_cls = partial(SFTDataset, skip_invalid=args.skip_invalid_rows)
    return run_supervised_stage(args, "sft", LM, dataset_cls, SFTCollator, SFTTrainer,
                                lambda: demo.sft_records(DEMO_SIZE, seed=args.seed))


def main(argv: Optional[List[str]] = None) -> dict:
    return run(parse_with_demo_defaults(build_parser(), argv, DEMO_DEFAULTS, "dataset"))
