"""Stage 2 (reward model) side by side: minichatgpt ``RewardModelTrainer`` against TRL's ``RewardTrainer``.

    OMP_NUM_THREADS=1 python benchmarks/compare_rm.py                      # a few minutes on 1 thread
    OMP_NUM_THREADS=1 python benchmarks/compare_rm.py --steps 2 --repeats 1 --warmup 0 --data demo --seq_len 10

Both sides train the same reward model, a randomly initialized GPT-2 backbone with a one-output linear
head (one ``AutoModelForSequenceClassification`` directory with ``num_labels=1``, which minichatgpt's
``RewardModel(pretrained=...)`` reads too), for ``--steps`` optimizer steps of ``--batch_size`` pairs whose
chosen and rejected sides are both exactly ``--seq_len`` tokens (hh-rlhf pairs from ``../shared/data``
with the GPT-2 tokenizer, or the demo pairs), tokenized once by minichatgpt's ``PreferenceDataset``.
Both run chosen and rejected rows as one (2B, T) forward pass and use the log-sigmoid pairwise loss.
Same AdamW (torch, weight decay 0, constant lr), clipping at 1.0, float32, no gradient checkpointing,
no evaluation or saving. Tokens/s counts both sides of every pair (``steps * batch_size * 2 * seq_len``).
See ``compare_common.py`` for the shared rules.

What still differs, by design of each library:

* TRL's model (``GPT2ForSequenceClassification``) applies the score head at every position and then picks
  the last non-pad one; minichatgpt reads the hidden state at the last real token and applies the head
  once per row (a (2B, H) instead of a (2B, T, H) product: negligible next to the backbone).
* TRL computes min/mean/max reward, accuracy and margin with ``.item()`` on every step; minichatgpt keeps
  accuracy and margin on the device and syncs once per ``log_interval`` steps (10 on both).
* TRL runs through ``transformers.Trainer`` (accelerate, callbacks); minichatgpt through ``NaiveStrategy``.
"""

import argparse
import os
import sys
from typing import List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_common import (Side, Stopwatch, add_common_arguments, compare_with_trl,  # noqa: E402
                            preference_examples, version_of)

OURS = "minichatgpt RewardModelTrainer"
LOG_INTERVAL = 10


def minichatgpt_side(args, classifier_dir: str, pairs, pad_token_id: int) -> Side:
    from minichatgpt.data import PreferenceCollator
    from minichatgpt.nn import RewardModel
    from minichatgpt.trainer import RewardModelTrainer
    from minichatgpt.trainer.strategies import NaiveStrategy

    def run():
        strategy = NaiveStrategy(args.device)
        model = RewardModel(pretrained=classifier_dir)
        optim = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
        model, optim = strategy.prepare((model, optim))
        loader = strategy.setup_dataloader(pairs, args.batch_size, shuffle=True,
                                           collate_fn=PreferenceCollator(pad_token_id), seed=args.seed)
        trainer = RewardModelTrainer(model, strategy, optim, None, loss_fn="log_sig", max_epochs=1,
                                     accumulation_steps=1, max_grad_norm=1.0, log_interval=LOG_INTERVAL)
        with Stopwatch(args.device) as watch:
            trainer.fit(loader)
        return watch.timing(len(pairs) * 2 * args.seq_len)

    return Side(OURS, run)


def trl_side(args, classifier_dir: str, tokenizer, pairs, output_dir: str) -> Side:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    dataset = Dataset.from_dict({"chosen_ids": [p["chosen_input_ids"].tolist() for p in pairs],
                                 "rejected_ids": [p["rejected_input_ids"].tolist() for p in pairs]})
    config = RewardConfig(output_dir=output_dir, max_steps=args.steps, num_train_epochs=1,
                          per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
                          learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                          max_grad_norm=1.0, optim="adamw_torch", bf16=False, fp16=False,
                          gradient_checkpointing=False, use_cpu=args.device == "cpu", report_to="none",
                          save_strategy="no", eval_strategy="no", logging_steps=LOG_INTERVAL, disable_tqdm=True,
                          dataloader_num_workers=0, seed=args.seed, max_length=args.seq_len,
                          center_rewards_coefficient=None)

    def run():
        model = AutoModelForSequenceClassification.from_pretrained(classifier_dir, num_labels=1, dtype=torch.float32)
        trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        with Stopwatch(args.device) as watch:
            trainer.train()
        return watch.timing(trainer.state.global_step * args.batch_size * 2 * args.seq_len)

    return Side(f"trl RewardTrainer {version_of('trl')}", run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, steps=10, batch_size=4, seq_len=128, lr=1e-4)
    return parser


def main(argv: Optional[List[str]] = None) -> dict:
    return compare_with_trl("compare_rm", build_parser().parse_args(argv), preference_examples, lambda dirs: dirs.classifier,
                            minichatgpt_side, trl_side, "trl RewardTrainer",
                            lambda args, data: (f" + score head; {data} data; batch {args.batch_size} pairs x 2 x {args.seq_len} tokens, {args.steps} steps"))


if __name__ == "__main__":
    main()
