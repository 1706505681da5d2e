"""Stage 1 (SFT) training throughput on a randomly initialized GPT-2-architecture model of a chosen size.

    python benchmarks/benchmark_sft.py --model tiny --strategy naive --steps 5
    torchrun --nproc_per_node 2 benchmarks/benchmark_sft.py --model xs --strategy ddp --seq_len 256

Times ``--steps`` optimizer steps of ``SFTTrainer`` (after ``--warmup_steps`` untimed ones) on
``--batch_size`` sequences per rank of ``--seq_len`` uniformly random token ids, the LM loss on every
token. Reports time, samples/s and tokens/s over all ranks, estimated TFLOPS (``6 * N * tokens``,
Kaplan et al. 2020, arXiv:2001.08361), peak memory per rank, a measured matmul TFLOPS (in --precision) and the
training fraction of it; rank 0 appends one JSON line to ``--results``. See ``benchmarks/common.py``.
"""

import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import build_supervised_parser, run_supervised  # noqa: E402


def main(argv: Optional[List[str]] = None) -> dict:
    return run_supervised("sft", build_supervised_parser("sft", __doc__.split("\n")[0]).parse_args(argv))


if __name__ == "__main__":
    main()
