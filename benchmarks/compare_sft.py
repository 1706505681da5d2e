"""Stage 1 (SFT) side by side: minichatgpt ``SFTTrainer`` against TRL's ``SFTTrainer``.

    OMP_NUM_THREADS=1 python benchmarks/compare_sft.py                     # a few minutes on 1 thread
    OMP_NUM_THREADS=1 python benchmarks/compare_sft.py --steps 2 --repeats 1 --warmup 0 --data demo --seq_len 12

Both sides train the same randomly initialized GPT-2 (loaded from one ``save_pretrained`` directory) for
``--steps`` optimizer steps of ``--batch_size`` demonstrations of exactly ``--seq_len`` tokens (Alpaca
samples from ``../shared/data`` with the GPT-2 tokenizer, or the demo data), with the loss on response
tokens only (the prompt's labels are -100, computed once by minichatgpt's ``SFTDataset`` and handed to
TRL as a ``labels`` column). Same AdamW (torch, weight decay 0, constant lr), gradient clipping at 1.0,
no accumulation, float32, no gradient checkpointing, no evaluation or saving. Tokens/s counts every token
of every sequence (``steps * batch_size * seq_len``). See ``compare_common.py`` for the shared rules.

What still differs, by design of each library (the defaults a user gets):

* TRL's ``SFTTrainer`` patches the model with a fused LM head (``trl.kernels.ChunkedLogProbFunction``): the
  (B, T, V) logits are never built; the vocabulary projection runs in tiles folded into running
  log-sum-exp, entropy and top-1 statistics, and the backward pass recomputes every tile. Where Triton is
  available (CUDA) only positions whose label is not -100 are projected; elsewhere (this CPU run) every
  position is. minichatgpt builds the full logits once and takes a masked cross-entropy. So TRL saves
  memory everywhere and, on a GPU with long prompts, compute; on a CPU it does more work.
* TRL also computes per-step entropy and token accuracy (no gradient) and ``.item()`` metrics; minichatgpt
  averages its logged loss on the device and syncs once per ``log_interval`` steps (10 on both).
* TRL runs through ``transformers.Trainer`` (accelerate, callbacks); minichatgpt through ``NaiveStrategy``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_common import Side, sft_examples  # noqa: E402
from compare_trl import TRLComparison, causal_lm, naive_side, trl_peer, trl_training_arguments  # noqa: E402

OURS = "minichatgpt SFTTrainer"
LOG_INTERVAL = 10


def minichatgpt_side(args, lm_dir: str, examples, pad_token_id: int) -> Side:
    from minichatgpt.data import SFTCollator
    from minichatgpt.nn import LM
    from minichatgpt.trainer import SFTTrainer

    def make_trainer(strategy, model, optim):
        return SFTTrainer(model, strategy, optim, None, max_epochs=1, accumulation_steps=1, max_grad_norm=1.0,
                          log_interval=LOG_INTERVAL)

    return naive_side(OURS, args, lambda: LM(pretrained=lm_dir), examples, SFTCollator(pad_token_id), make_trainer,
                      lambda: len(examples) * args.seq_len)


def trl_side(args, lm_dir: str, tokenizer, examples, output_dir: str) -> Side:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_dict({"input_ids": [e["input_ids"].tolist() for e in examples],
                                 "labels": [e["labels"].tolist() for e in examples]})
    config = SFTConfig(**trl_training_arguments(args, output_dir, LOG_INTERVAL), max_length=args.seq_len,
                       packing=False)

    return trl_peer(SFTTrainer, args.device, lambda: causal_lm(lm_dir), args.batch_size * args.seq_len, args=config,
                    train_dataset=dataset, processing_class=tokenizer)


COMPARISON = TRLComparison("compare_sft", __doc__, dict(steps=5, batch_size=4, seq_len=128, lr=1e-4), sft_examples,
                           "lm", minichatgpt_side, trl_side, "trl SFTTrainer",
                           "; {data} data; batch {batch_size} x {seq_len} tokens, {steps} steps")
build_parser, main = COMPARISON.build_parser, COMPARISON.main


if __name__ == "__main__":
    main()
