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

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_common import Side, preference_examples  # noqa: E402
from compare_trl import TRLComparison, naive_side, trl_peer, trl_training_arguments  # noqa: E402

OURS = "minichatgpt RewardModelTrainer"
LOG_INTERVAL = 10


def minichatgpt_side(args, classifier_dir: str, pairs, pad_token_id: int) -> Side:
    from minichatgpt.data import PreferenceCollator
    from minichatgpt.nn import RewardModel
    from minichatgpt.trainer import RewardModelTrainer

    def make_trainer(strategy, model, optim):
        return RewardModelTrainer(model, strategy, optim, None, loss_fn="log_sig", max_epochs=1, accumulation_steps=1,
                                  max_grad_norm=1.0, log_interval=LOG_INTERVAL)

    return naive_side(OURS, args, lambda: RewardModel(pretrained=classifier_dir), pairs,
                      PreferenceCollator(pad_token_id), make_trainer, lambda: len(pairs) * 2 * args.seq_len)


def trl_side(args, classifier_dir: str, tokenizer, pairs, output_dir: str) -> Side:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    dataset = Dataset.from_dict({"chosen_ids": [p["chosen_input_ids"].tolist() for p in pairs],
                                 "rejected_ids": [p["rejected_input_ids"].tolist() for p in pairs]})
    config = RewardConfig(**trl_training_arguments(args, output_dir, LOG_INTERVAL), max_length=args.seq_len,
                          center_rewards_coefficient=None)

    def load_model():
        return AutoModelForSequenceClassification.from_pretrained(classifier_dir, num_labels=1, dtype=torch.float32)

    return trl_peer(RewardTrainer, args.device, load_model, args.batch_size * 2 * args.seq_len, args=config,
                    train_dataset=dataset, processing_class=tokenizer)


COMPARISON = TRLComparison("compare_rm", __doc__, dict(steps=10, batch_size=4, seq_len=128, lr=1e-4),
                           preference_examples, "classifier", minichatgpt_side, trl_side, "trl RewardTrainer",
                           " + score head; {data} data; batch {batch_size} pairs x 2 x {seq_len} tokens, {steps} steps")
build_parser, main = COMPARISON.build_parser, COMPARISON.main


if __name__ == "__main__":
    main()
