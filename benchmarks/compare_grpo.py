"""Critic-free RL side by side: minichatgpt ``GRPOTrainer`` (``--algo grpo``) against TRL's ``GRPOTrainer``.

    OMP_NUM_THREADS=1 python benchmarks/compare_grpo.py                     # a few minutes on 1 thread
    OMP_NUM_THREADS=1 python benchmarks/compare_grpo.py --steps 2 --repeats 1 --warmup 0 --data demo --seq_len 8

Both sides train the same randomly initialized GPT-2 policy for ``--steps`` steps. Each step takes
``--batch_size`` prompts of exactly ``--seq_len`` tokens (hh-rlhf prompts with the GPT-2 tokenizer, or the
demo prompts; no padding), samples ``--num_generations`` responses per prompt of at most ``--max_new_tokens``
tokens (temperature 1, no top-k/top-p, KV cache, stop at EOS), scores them with one reward function
(``letter_e_reward`` below, on the decoded text), normalizes each group's rewards by its mean and standard
deviation (GRPO, arXiv:2402.03300), computes reference log-probs from a frozen copy of the starting weights
and takes one optimizer step on the clipped surrogate (clip 0.2) plus the k3 KL term (beta 0.04), each
sequence's loss averaged over its tokens and then over the sequences (TRL ``loss_type="grpo"``). One
rollout batch, one minibatch, one optimizer step per step (TRL ``num_iterations=1``,
``per_device_train_batch_size = batch_size x num_generations``). AdamW (torch, weight decay 0, constant lr),
clipping at 1.0, float32, no gradient checkpointing, evaluation, completion logging or saving; TRL without
vLLM. See ``compare_common.py`` for the shared rules.

Tokens/s counts what each step generates and what it trains on: every prompt token once (the training
forward) and every response token twice (sampled, then trained on), ``prompt_tokens + 2 x
generated_tokens``, with the generated tokens counted from each side's own rollouts (up to and including
EOS), since a randomly initialized model may stop early at a different point on each side.

What still differs, by design of each library:

* Generation: TRL repeats each prompt ``num_generations`` times and runs ``model.generate`` on all rows;
  minichatgpt runs each prompt once and repeats its KV cache for the samples, drops finished rows from
  the batch, and keeps the sampled tokens' log-probs as the behaviour log-probs. TRL, with
  ``num_iterations=1``, takes them from the training forward (detached) instead; the loss is the same.
* TRL decodes the completions, re-tokenizes nothing (it keeps the ids), and computes per-token entropies
  and several metrics with ``.item()`` every step; minichatgpt logs reward, KL, length and loss statistics
  once per step.
* TRL gets the prompts as text (decoded from the same ids; only prompts that re-tokenize to the same ids
  are used) and runs through ``transformers.Trainer``; minichatgpt gets the ids and runs through
  ``NaiveStrategy``.
* TRL builds its reference model from the policy's directory; minichatgpt loads the same directory.
* Both call ``letter_e_reward`` on the decoded responses: TRL directly, minichatgpt through
  ``RewardFunctions`` (what ``--reward_fn path/to/file.py:name`` builds), which returns a float32 tensor.
"""

import argparse
import os
import sys
from typing import List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_common import Side, prompt_examples, version_of  # noqa: E402
from compare_trl import TRLComparison, causal_lm, naive_side, timed_call, trl_training_arguments  # noqa: E402

OURS = "minichatgpt GRPOTrainer"
LOG_INTERVAL = 10
BETA, CLIP_EPS = 0.04, 0.2
REWARD = f"{os.path.abspath(__file__)}:letter_e_reward"


def letter_e_reward(prompts: List[str], completions: List[str], **columns) -> List[float]:
    """Share of the letter "e" in each response: cheap, deterministic, and varied within a group."""
    return [c.count("e") / max(len(c), 1) for c in completions]


def round_trip_prompts(tokenizer, data: str, prompt_len: int, n: int) -> List[dict]:
    """``n`` prompts of exactly ``prompt_len`` tokens whose decoded text tokenizes back to the same ids (TRL
    gets the text): ``{"input_ids", "prompt"}``."""
    ids = prompt_examples(tokenizer, data, prompt_len, max(n, 64))
    kept = []
    for row in ids.tolist():
        text = tokenizer.decode(row)
        if tokenizer(text, add_special_tokens=False)["input_ids"] == row:
            kept.append({"input_ids": torch.tensor(row), "prompt": text})
    if not kept:
        raise SystemExit(f"no prompt of {prompt_len} tokens survives decoding and re-tokenizing; change --seq_len")
    return [kept[i % len(kept)] for i in range(n)]


def minichatgpt_side(args, lm_dir: str, prompts, pad_token_id: int) -> Side:
    from minichatgpt.data import RewardPromptCollator
    from minichatgpt.experience.reward_functions import RewardFunctions
    from minichatgpt.nn import Actor, load_tokenizer
    from minichatgpt.trainer import Callback
    from minichatgpt.trainer.grpo import GRPOTrainer

    rows = args.batch_size * args.num_generations

    class GeneratedTokens(Callback):
        """Sums the generated tokens of each step (the logged mean response length x rows)."""
        total = 0.0

        def on_log(self, step: int, metrics: dict) -> None:
            self.total += metrics["response_length"] * rows

    def make_trainer(strategy, actor, optim):
        counter.total = 0.0
        reference = strategy.prepare(Actor(pretrained=lm_dir).requires_grad_(False))
        return GRPOTrainer(actor, strategy, optim, reward_fn=RewardFunctions([REWARD]), reference_model=reference,
                           tokenizer=load_tokenizer(lm_dir), algo="grpo", num_samples_per_prompt=args.num_generations,
                           max_epochs=1, train_batch_size=rows, clip_eps=CLIP_EPS, kl_coef=BETA, kl_mode="loss",
                           loss_aggregation="sequence", max_grad_norm=1.0, callbacks=[counter],
                           max_new_tokens=args.max_new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)

    def tokens() -> int:
        return round(len(prompts) * args.num_generations * args.seq_len + 2 * counter.total)

    counter = GeneratedTokens()
    return naive_side(OURS, args, lambda: Actor(pretrained=lm_dir), prompts, RewardPromptCollator(pad_token_id),
                      make_trainer, tokens)


def trl_side(args, lm_dir: str, tokenizer, prompts, output_dir: str) -> Side:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    dataset = Dataset.from_dict({"prompt": [p["prompt"] for p in prompts]})
    rows = args.batch_size * args.num_generations
    config = GRPOConfig(**trl_training_arguments(args, output_dir, LOG_INTERVAL, batch_size=rows),
                        num_generations=args.num_generations, max_completion_length=args.max_new_tokens,
                        temperature=1.0, top_k=0, top_p=1.0, beta=BETA, epsilon=CLIP_EPS, num_iterations=1,
                        loss_type="grpo", scale_rewards="group", use_vllm=False, log_completions=False,
                        disable_dropout=True)

    def run():
        trainer = GRPOTrainer(model=causal_lm(lm_dir), reward_funcs=letter_e_reward, args=config, train_dataset=dataset,
                              processing_class=tokenizer)

        def tokens():
            prompt_tokens = trainer.state.global_step * rows * args.seq_len
            generated = trainer.state.num_input_tokens_seen - prompt_tokens  # it counts prompt + completion tokens
            return prompt_tokens + 2 * generated

        return timed_call(args.device, trainer.train, tokens)

    return Side(f"trl GRPOTrainer {version_of('trl')}", run)


def grpo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num_generations", type=int, default=4, help="responses sampled per prompt (G)")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="most tokens sampled per response")


COMPARISON = TRLComparison("compare_grpo", __doc__, dict(steps=4, batch_size=4, seq_len=64, lr=1e-5),
                           round_trip_prompts, "lm", minichatgpt_side, trl_side, "trl GRPOTrainer",
                           "; {data} prompts; {steps} steps of {batch_size} prompts x {num_generations} samples, "
                           "{seq_len} prompt tokens + up to {max_new_tokens} sampled", grpo_arguments)
build_parser, main = COMPARISON.build_parser, COMPARISON.main


if __name__ == "__main__":
    main()
