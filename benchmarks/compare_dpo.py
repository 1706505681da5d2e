"""Offline DPO side by side: minichatgpt ``DPOTrainer`` against TRL's ``DPOTrainer``.

    OMP_NUM_THREADS=1 python benchmarks/compare_dpo.py
    OMP_NUM_THREADS=1 python benchmarks/compare_dpo.py --steps 2 --repeats 1 --warmup 0 --data demo --seq_len 10

Both sides train the same randomly initialized GPT-2 policy with the sigmoid DPO loss (beta 0.1) against a
frozen reference copy of the starting weights, for ``--steps`` optimizer steps of ``--batch_size`` pairs
whose chosen and rejected sides are both exactly ``--seq_len`` tokens (``PreferenceDataset`` pairs, the
prompt taken from the chosen side). Same AdamW (torch, weight decay 0, constant lr), clipping at 1.0,
float32, no evaluation or saving. Tokens/s counts both sides of every pair. See ``compare_common.py``.

What still differs, by design of each library:

* TRL 1.16's ``DPOTrainer`` takes text only: it gets the decoded prompt (the chosen side's), chosen and
  rejected answers, re-tokenizes them and appends an EOS token (one token more per side than minichatgpt);
  minichatgpt scores each side's own response tokens (identical when both sides share their prompt).
* Reference log-probs: minichatgpt's ``reference="auto"`` choice against TRL's live reference model.
* TRL runs through ``transformers.Trainer``; minichatgpt through ``NaiveStrategy``.
"""

import argparse
import os
import sys
from typing import List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_common import (Side, Stopwatch, add_common_arguments, compare_with_trl,  # noqa: E402
                            preference_examples, version_of)

OURS = "minichatgpt DPOTrainer"
LOG_INTERVAL = 10
BETA = 0.1


def minichatgpt_side(args, lm_dir: str, pairs, pad_token_id: int) -> Side:
    from minichatgpt.data import DPOCollator
    from minichatgpt.nn import Actor
    from minichatgpt.trainer import DPOTrainer
    from minichatgpt.trainer.strategies import NaiveStrategy

    def run():
        strategy = NaiveStrategy(args.device)
        model = Actor(pretrained=lm_dir)
        optim = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
        model, optim = strategy.prepare((model, optim))
        loader = strategy.setup_dataloader(pairs, args.batch_size, shuffle=True,
                                           collate_fn=DPOCollator(pad_token_id), seed=args.seed)
        trainer = DPOTrainer(model, strategy, optim, None, loss_type="sigmoid", beta=BETA, max_epochs=1,
                             accumulation_steps=1, max_grad_norm=1.0, log_interval=LOG_INTERVAL)
        with Stopwatch(args.device) as watch:
            trainer.fit(loader)
        return watch.timing(len(pairs) * 2 * args.seq_len)

    return Side(OURS, run)


def trl_side(args, lm_dir: str, tokenizer, pairs, output_dir: str) -> Side:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    rows = []
    for p in pairs:
        n = int(p["chosen_prompt_len"])
        ids = (p["chosen_input_ids"][:n], p["chosen_input_ids"][n:], p["rejected_input_ids"][n:])
        rows.append(dict(zip(("prompt", "chosen", "rejected"), (tokenizer.decode(i) for i in ids))))
    dataset = Dataset.from_list(rows)
    config = DPOConfig(output_dir=output_dir, max_steps=args.steps, num_train_epochs=1,
                       per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
                       learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                       max_grad_norm=1.0, optim="adamw_torch", bf16=False, fp16=False,
                       gradient_checkpointing=False, use_cpu=args.device == "cpu", report_to="none",
                       save_strategy="no", eval_strategy="no", logging_steps=LOG_INTERVAL, disable_tqdm=True,
                       dataloader_num_workers=0, seed=args.seed, max_length=None, loss_type=["sigmoid"], beta=BETA)

    def run():
        model = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
        trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        with Stopwatch(args.device) as watch:
            trainer.train()
        return watch.timing(trainer.state.global_step * args.batch_size * 2 * args.seq_len)

    return Side(f"trl DPOTrainer {version_of('trl')}", run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, steps=10, batch_size=4, seq_len=128, lr=1e-5)
    return parser


def main(argv: Optional[List[str]] = None) -> dict:
    return compare_with_trl("compare_dpo", build_parser().parse_args(argv), preference_examples, lambda dirs: dirs.lm,
                            minichatgpt_side, trl_side, "trl DPOTrainer",
                            lambda args, data: (f"; {data} data; batch {args.batch_size} pairs x 2 x {args.seq_len} tokens, {args.steps} steps"))


if __name__ == "__main__":
    main()
