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

import argparse
import os
import sys
from typing import List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_common import (Side, Stopwatch, add_common_arguments, compare_with_trl,  # noqa: E402
                            sft_examples, version_of)

OURS = "minichatgpt SFTTrainer"
LOG_INTERVAL = 10


def minichatgpt_side(args, lm_dir: str, examples, pad_token_id: int) -> Side:
    from minichatgpt.data import SFTCollator
    from minichatgpt.nn import LM
    from minichatgpt.trainer import SFTTrainer
    from minichatgpt.trainer.strategies import NaiveStrategy

    def run():
        strategy = NaiveStrategy(args.device)
        model = LM(pretrained=lm_dir)
        optim = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
        model, optim = strategy.prepare((model, optim))
        loader = strategy.setup_dataloader(examples, args.batch_size, shuffle=True,
                                           collate_fn=SFTCollator(pad_token_id), seed=args.seed)
        trainer = SFTTrainer(model, strategy, optim, None, max_epochs=1, accumulation_steps=1, max_grad_norm=1.0,
                             log_interval=LOG_INTERVAL)
        with Stopwatch(args.device) as watch:
            trainer.fit(loader)
        return watch.timing(len(examples) * args.seq_len)

    return Side(OURS, run)


def trl_side(args, lm_dir: str, tokenizer, examples, output_dir: str) -> Side:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_dict({"input_ids": [e["input_ids"].tolist() for e in examples],
                                 "labels": [e["labels"].tolist() for e in examples]})
    config = SFTConfig(output_dir=output_dir, max_steps=args.steps, num_train_epochs=1,
                       per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
                       learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                       max_grad_norm=1.0, optim="adamw_torch", bf16=False, fp16=False, gradient_checkpointing=False,
                       use_cpu=args.device == "cpu", report_to="none", save_strategy="no", eval_strategy="no",
                       logging_steps=LOG_INTERVAL, disable_tqdm=True, dataloader_num_workers=0, seed=args.seed,
                       max_length=args.seq_len, packing=False)

    def run():
        model = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        with Stopwatch(args.device) as watch:
            trainer.train()
        return watch.timing(trainer.state.global_step * args.batch_size * args.seq_len)

    return Side(f"trl SFTTrainer {version_of('trl')}", run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, steps=5, batch_size=4, seq_len=128, lr=1e-4)
    return parser


def main(argv: Optional[List[str]] = None) -> dict:
    return compare_with_trl("compare_sft", build_parser().parse_args(argv), sft_examples, lambda dirs: dirs.lm,
                            minichatgpt_side, trl_side, "trl SFTTrainer",
                            lambda args, data: (f"; {data} data; batch {args.batch_size} x {args.seq_len} tokens, {args.steps} steps"))


if __name__ == "__main__":
    main()
