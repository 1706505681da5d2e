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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_common import Side, preference_examples  # noqa: E402
from compare_trl import TRLComparison, causal_lm, naive_side, trl_peer, trl_training_arguments  # noqa: E402

OURS = "minichatgpt DPOTrainer"
LOG_INTERVAL = 10
BETA = 0.1


def minichatgpt_side(args, lm_dir: str, pairs, pad_token_id: int) -> Side:
    from minichatgpt.data import DPOCollator
    from minichatgpt.nn import Actor
    from minichatgpt.trainer import DPOTrainer

    def make_trainer(strategy, model, optim):
        return DPOTrainer(model, strategy, optim, None, loss_type="sigmoid", beta=BETA, max_epochs=1,
                          accumulation_steps=1, max_grad_norm=1.0, log_interval=LOG_INTERVAL)

    return naive_side(OURS, args, lambda: Actor(pretrained=lm_dir), pairs, DPOCollator(pad_token_id), make_trainer,
                      lambda: len(pairs) * 2 * args.seq_len)


def trl_side(args, lm_dir: str, tokenizer, pairs, output_dir: str) -> Side:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows = []
    for p in pairs:
        n = int(p["chosen_prompt_len"])
        ids = (p["chosen_input_ids"][:n], p["chosen_input_ids"][n:], p["rejected_input_ids"][n:])
        rows.append(dict(zip(("prompt", "chosen", "rejected"), (tokenizer.decode(i) for i in ids))))
    dataset = Dataset.from_list(rows)
    config = DPOConfig(**trl_training_arguments(args, output_dir, LOG_INTERVAL), max_length=None,
                       loss_type=["sigmoid"], beta=BETA)

    return trl_peer(DPOTrainer, args.device, lambda: causal_lm(lm_dir), args.batch_size * 2 * args.seq_len,
                    args=config, train_dataset=dataset, processing_class=tokenizer)


COMPARISON = TRLComparison("compare_dpo", __doc__, dict(steps=10, batch_size=4, seq_len=128, lr=1e-5),
                           preference_examples, "lm", minichatgpt_side, trl_side, "trl DPOTrainer",
                           "; {data} data; batch {batch_size} pairs x 2 x {seq_len} tokens, {steps} steps")
build_parser, main = COMPARISON.build_parser, COMPARISON.main


if __name__ == "__main__":
    main()
