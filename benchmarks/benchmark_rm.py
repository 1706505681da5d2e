"""Stage 2 (reward model) training throughput on a randomly initialized GPT-2-architecture model.

    python benchmarks/benchmark_rm.py --model tiny --strategy naive --steps 5
    torchrun --nproc_per_node 2 benchmarks/benchmark_rm.py --model xs --strategy ddp --seq_len 256

Times ``--steps`` optimizer steps of ``RewardModelTrainer`` (after ``--warmup_steps`` untimed ones) on
``--batch_size`` pairs per rank, each half ``--seq_len`` uniformly random token ids (chosen and rejected go
through the backbone together as 2B rows, as in training). Samples are pairs, tokens count both halves;
TFLOPS = ``6 * N * tokens`` (Kaplan et al. 2020, arXiv:2001.08361). Also peak memory per rank and the
training fraction of a measured matmul TFLOPS (in --precision); rank 0 appends one JSON line to ``--results``.
See ``benchmarks/common.py``.
"""

import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import build_supervised_parser, run_supervised  # noqa: E402


def main(argv: Optional[List[str]] = None) -> dict:
    return run_supervised("rm", build_supervised_parser("rm", __doc__.split("\n")[0]).parse_args(argv))


if __name__ == "__main__":
    main()
