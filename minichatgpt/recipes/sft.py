"""Stage 1 recipe: supervised fine-tuning (``examples/train_sft.py``, ``minichatgpt sft``)."""

from functools import partial
from typing import List, Optional

from .. import demo
from ..config import ConfigParser
from ..data import SFTCollator, SFTDataset
from ..nn import LM
from ..trainer import SFTTrainer
from .arguments import stage_parser
from .common import run_supervised_stage
from .configs import SFTConfig

DEMO_SIZE = 3000


def build_parser() -> ConfigParser:
    """``parse_args`` of this parser returns an :class:`SFTConfig`."""
    return stage_parser("sft")


def run(args: SFTConfig) -> dict:
    """Train and save; returns the final metrics (training loss, eval loss and perplexity)."""
    dataset_cls = partial(SFTDataset, skip_invalid=args.skip_invalid_rows)
    return run_supervised_stage(args, "sft", LM, dataset_cls, SFTCollator, SFTTrainer,
                                lambda: demo.sft_records(DEMO_SIZE, seed=args.seed))


def main(argv: Optional[List[str]] = None) -> dict:
    return run(build_parser().parse_args(argv))
