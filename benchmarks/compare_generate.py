"""Rollout generation side by side: ``minichatgpt.nn.generation.generate`` against Hugging Face ``generate``.

    OMP_NUM_THREADS=1 python benchmarks/compare_generate.py                # a few minutes on 1 thread
    OMP_NUM_THREADS=1 python benchmarks/compare_generate.py --steps 1 --repeats 1 --warmup 0 --data demo --seq_len 6

One randomly initialized GPT-2 (loaded once, eval mode, float32) continues the same ``--batch_size``
prompts of exactly ``--seq_len`` tokens (hh-rlhf prompts from ``../shared/data`` with the GPT-2 tokenizer,
or the demo prompts; no padding) by ``--max_new_tokens`` tokens, ``--steps`` calls per timed run, greedy
and sampling (temperature 1, no top-k/top-p), with the KV cache, EOS and pad ids given on every side.
Rows per mode:

* ``minichatgpt generate``: the PPO rollout loop; it also returns each sampled token's log-probability
  under the raw policy (what the PPO ratio needs), gathered step by step;
* ``HF generate``: ``model.generate`` returning token ids only (less work than a rollout needs);
* ``HF generate + logprobs``: ``model.generate(output_logits=True, return_dict_in_generate=True)``, then
  ``log_softmax`` of the stacked raw logits gathered at the generated tokens: the same outputs as
  minichatgpt's rollout, the way one gets them from ``transformers``.

Tokens/s counts generated tokens (up to and including EOS; a random model rarely emits it, so normally
``steps * batch_size * max_new_tokens``). Greedy decoding is deterministic, so the script also checks that
minichatgpt and HF produced the same tokens; sampling draws from the same seeded generator on every side,
so the sampled tokens (and the work) are the same too. See ``compare_common.py`` for the shared rules.

What still differs: HF's prefill asks the model for the last prompt position's logits only
(``logits_to_keep=1``); minichatgpt's ``generate`` (at the time of writing) lets the prefill compute
logits at every prompt position, (B, P, V) work that it throws away. HF's loop also runs its
logits-processor and stopping-criteria machinery on every step.
"""

import argparse
import os
import sys
import tempfile
from typing import List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_common import (Side, Stopwatch, add_common_arguments, alternate, build_tokenizer,  # noqa: E402
                            model_description, prompt_examples, ratios, report, resolve_data, save_models, set_threads)

MODES = ("greedy", "sample")


def response_tokens(sequences: torch.Tensor, prompt_len: int, eos_token_id: int, pad_token_id: int) -> torch.Tensor:
    """(B,) generated tokens per row up to and including the first EOS (pad after it on both sides)."""
    response = sequences[:, prompt_len:]
    is_eos = (response == eos_token_id).long()
    after_eos = (is_eos.cumsum(-1) - is_eos) > 0  # positions after the first EOS
    return ((response != pad_token_id) & ~after_eos).sum(-1)


def build_sides(args, model, prompts: torch.Tensor, eos_token_id: int, pad_token_id: int, mode: str, outputs: dict):
    """The three sides of one decoding mode; ``outputs[name]`` keeps the last sequences for the greedy check."""
    from minichatgpt.nn.generation import generate

    do_sample = mode == "sample"
    attention_mask = torch.ones_like(prompts)
    sampling = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
    hf_kwargs = dict(max_new_tokens=args.max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                     use_cache=True, **sampling)

    def timed(name, call):
        def run():
            torch.manual_seed(args.seed)
            tokens = 0
            with Stopwatch(args.device) as watch:
                for _ in range(args.steps):
                    sequences = call()
                    tokens += int(response_tokens(sequences, prompts.size(1), eos_token_id, pad_token_id).sum())
            outputs[name] = sequences
            return watch.timing(tokens)
        return Side(name, run)

    def ours():
        rollout = generate(model, prompts, attention_mask, args.max_new_tokens, eos_token_id, pad_token_id,
                           **sampling)
        return rollout.sequences

    @torch.no_grad()
    def hf():
        return model.generate(input_ids=prompts, attention_mask=attention_mask, **hf_kwargs)

    @torch.no_grad()
    def hf_logprobs():
        out = model.generate(input_ids=prompts, attention_mask=attention_mask, output_logits=True,
                             return_dict_in_generate=True, **hf_kwargs)
        response = out.sequences[:, prompts.size(1):]  # (B, A)
        logits = torch.stack(out.logits, dim=1).float()  # (B, A, V) raw (unprocessed) logits
        log_probs = logits.log_softmax(-1).gather(-1, response.unsqueeze(-1)).squeeze(-1)  # (B, A)
        log_probs.sum()  # used, as the rollout's are
        return out.sequences

    return [timed(f"minichatgpt generate [{mode}]", ours), timed(f"HF generate [{mode}]", hf),
            timed(f"HF generate + logprobs [{mode}]", hf_logprobs)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, steps=4, batch_size=8, seq_len=64, lr=0.0)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--modes", default="greedy,sample", help=f"comma-separated, from {MODES}")
    return parser


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    args.data = data = resolve_data(args.data)
    modes = args.modes.split(",")
    if set(modes) - set(MODES):
        raise SystemExit(f"unknown modes {sorted(set(modes) - set(MODES))}; choose from {MODES}")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = build_tokenizer(data)
    prompts = prompt_examples(tokenizer, data, args.seq_len, args.batch_size).to(args.device)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    with tempfile.TemporaryDirectory(prefix="compare_generate_") as tmp:
        dirs = save_models(tokenizer, tmp, args.n_layer, args.n_embd, args.n_head,
                           max(1024, args.seq_len + args.max_new_tokens), args.seed)
        model = AutoModelForCausalLM.from_pretrained(dirs.lm, dtype=torch.float32).to(args.device).eval()
    outputs, sides, pairs = {}, [], []
    for mode in modes:
        mode_sides = build_sides(args, model, prompts, eos, pad, mode, outputs)
        mode_sides = mode_sides[:1] if args.no_peer else mode_sides
        sides += mode_sides
        pairs += [(mode_sides[0].name, side.name) for side in mode_sides[1:]]
    results = alternate(sides, args.repeats, args.warmup)
    notes = []
    if "greedy" in modes and not args.no_peer:
        same = torch.equal(outputs["minichatgpt generate [greedy]"], outputs["HF generate [greedy]"])
        notes.append(f"greedy tokens identical between minichatgpt and HF generate: {same}")
    skipped = {"HF generate": "--no_peer"} if args.no_peer else {}
    header = (f"{model_description(args, dirs, len(tokenizer))}; {data} prompts; batch {args.batch_size} x "
              f"{args.seq_len} prompt tokens + {args.max_new_tokens} new tokens, {args.steps} calls per run; "
              f"median of {args.repeats} alternating runs (+{args.warmup} warm-up); {args.device}, "
              f"{torch.get_num_threads()} thread(s)")
    return report("compare_generate", args, header, results, ratios(results, pairs), skipped, notes)


if __name__ == "__main__":
    main()
