"""Rollout generation side by side: ``minichatgpt.nn.generation.generate`` against Hugging Face ``generate``.

    OMP_NUM_THREADS=1 python benchmarks/compare_generate.py                # a few minutes on 1 thread
    OMP_NUM_THREADS=1 python benchmarks/compare_generate.py --steps 1 --repeats 1 --warmup 0 --data demo --seq_len 6
    OMP_NUM_THREADS=1 python benchmarks/compare_generate.py --modes group --seq_len 256 --max_new_tokens 64  # README
    python benchmarks/compare_generate.py --device cuda --decode dynamic,cuda_graph --no_peer  # the GPU decode step

One randomly initialized GPT-2 (loaded once, eval mode, float32) continues the same ``--batch_size``
prompts of exactly ``--seq_len`` tokens (hh-rlhf prompts from ``../shared/data`` with the GPT-2 tokenizer,
or the demo prompts; no padding) by ``--max_new_tokens`` tokens, ``--steps`` calls per timed run, greedy
and sampling (temperature 1, no top-k/top-p), with the KV cache, EOS and pad ids given on every side.
Rows per mode:

* ``minichatgpt generate``: the PPO rollout loop; it also returns each sampled token's log-probability
  under the raw policy (what the PPO ratio needs), gathered step by step;
* ``minichatgpt generate static`` / ``cuda_graph`` (with ``--decode dynamic,static,cuda_graph``): the same
  loop over a static KV cache that keeps every row until all have finished, eager or replayed from a CUDA
  graph (``minichatgpt.nn.cuda_decode``); compared with HF and with the first ``--decode``;
* ``HF generate``: ``model.generate`` returning token ids only (less work than a rollout needs);
* ``HF generate + logprobs``: ``model.generate(output_logits=True, return_dict_in_generate=True)``, then
  ``log_softmax`` of the stacked raw logits gathered at the generated tokens: the same outputs as
  minichatgpt's rollout, the way one gets them from ``transformers``.

Modes ``eos`` (plain PPO-style rollouts) and ``group`` (``--group_size`` samples per prompt: minichatgpt's
``num_samples``, which runs each prompt once and repeats its KV cache, against HF's
``num_return_sequences``, which runs it G times) sample with an EOS list, the EOS id plus a seeded random
``--eos_share`` of the vocabulary: a random model samples close to uniformly, so rows end at geometric,
spread-out lengths (mean ``1 / eos_share``), on both sides alike.

Tokens/s counts generated tokens (up to and including EOS). Greedy decoding is deterministic, so the script
also checks that minichatgpt and HF produced the same tokens. Sampling draws from the same seeded generator
on every side, but minichatgpt draws for the running rows only (finished rows leave its batch), so the
sampled tokens, and with an EOS list the number of tokens, differ between the sides.

What still differs: HF's loop runs its logits-processor and stopping-criteria machinery on every step, and
keeps computing finished rows (padding them) until every row has ended.
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

MODES = ("greedy", "sample", "eos", "group")
DECODES = ("dynamic", "static", "cuda_graph")  # generate(decode=...): see minichatgpt.nn.cuda_decode


def response_tokens(sequences: torch.Tensor, prompt_len: int, eos_ids, pad_token_id: int) -> torch.Tensor:
    """(B,) generated tokens per row up to and including the first EOS (pad after it on both sides)."""
    response = sequences[:, prompt_len:]
    is_eos = torch.isin(response, torch.as_tensor(eos_ids, device=response.device)).long()
    after_eos = (is_eos.cumsum(-1) - is_eos) > 0  # positions after the first EOS
    return ((response != pad_token_id) & ~after_eos).sum(-1)


def spread_eos_ids(vocab_size: int, eos_token_id: int, pad_token_id: int, share: float, seed: int) -> List[int]:
    """The EOS id plus a seeded random ``share`` of the vocabulary, all treated as EOS on every side.

    A randomly initialized model samples close to uniformly over its vocabulary, so each sampled token
    ends its row with probability about ``share``: response lengths are geometric (mean ``1 / share``),
    spread out across rows as real answers are, and the same distribution for both sides."""
    order = torch.randperm(vocab_size, generator=torch.Generator().manual_seed(seed)).tolist()
    extra = [i for i in order if i not in (eos_token_id, pad_token_id)][:int(share * vocab_size)]
    return [eos_token_id] + extra


def side_name(decode: str, mode: str) -> str:
    """The row of minichatgpt's generate() with ``decode`` in ``mode`` (the dynamic loop keeps the plain name)."""
    return f"minichatgpt generate{'' if decode == 'dynamic' else ' ' + decode} [{mode}]"


def build_sides(args, model, prompts: torch.Tensor, eos_ids, pad_token_id: int, mode: str, outputs: dict):
    """The sides of one decoding mode, (minichatgpt's, one per ``--decode``; the peers');
    ``outputs[name]`` keeps the last sequences for the greedy check.

    ``eos`` and ``group`` sample with ``eos_ids`` (a list); ``group`` draws ``--group_size`` samples per
    prompt (minichatgpt: ``num_samples``, HF: ``num_return_sequences``)."""
    from minichatgpt.nn.generation import generate

    do_sample = mode != "greedy"
    G = args.group_size if mode == "group" else 1
    eos = eos_ids if mode in ("eos", "group") else eos_ids[0]
    attention_mask = torch.ones_like(prompts)
    sampling = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
    hf_kwargs = dict(max_new_tokens=args.max_new_tokens, eos_token_id=eos, pad_token_id=pad_token_id,
                     use_cache=True, num_return_sequences=G, **sampling)

    def timed(name, call):
        def run():
            torch.manual_seed(args.seed)
            tokens = 0
            with Stopwatch(args.device) as watch:
                for _ in range(args.steps):
                    sequences = call()
                    tokens += int(response_tokens(sequences, prompts.size(1), eos, pad_token_id).sum())
            outputs[name] = sequences
            return watch.timing(tokens)
        return Side(name, run)

    def ours(decode):
        def call():
            rollout = generate(model, prompts, attention_mask, args.max_new_tokens, eos, pad_token_id,
                               num_samples=G, decode=decode, **sampling)
            return rollout.sequences
        return call

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

    mine = [timed(side_name(decode, mode), ours(decode)) for decode in args.decode.split(",")]
    peers = [timed(f"HF generate [{mode}]", hf)]
    return mine, peers if mode == "group" else peers + [timed(f"HF generate + logprobs [{mode}]", hf_logprobs)]


def greedy_notes(outputs: dict, decodes: List[str], no_peer: bool) -> List[str]:
    """Whether each decode's greedy tokens equal HF generate's (the first decode's with ``no_peer``)."""
    reference, label = (side_name(decodes[0], "greedy"), f"minichatgpt {decodes[0]}") if no_peer \
        else ("HF generate [greedy]", "HF generate")
    return [f"greedy tokens identical between minichatgpt{'' if d == 'dynamic' else ' ' + d} and {label}: "
            f"{torch.equal(outputs[side_name(d, 'greedy')], outputs[reference])}"
            for d in decodes if side_name(d, "greedy") != reference]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, steps=4, batch_size=8, seq_len=64, lr=0.0)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--modes", default="greedy,sample", help=f"comma-separated, from {MODES}")
    parser.add_argument("--group_size", type=int, default=8, help="samples per prompt in the group mode")
    parser.add_argument("--eos_share", type=float, default=1 / 32,
                        help="share of the vocabulary that ends a row in the eos and group modes")
    parser.add_argument("--decode", default="dynamic",
                        help=f"comma-separated generate() decode modes to time, from {DECODES}; each is compared "
                             "with the first and with the HF sides")
    return parser


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    args.data = data = resolve_data(args.data)
    modes, decodes = args.modes.split(","), args.decode.split(",")
    for flag, given, known in (("--modes", modes, MODES), ("--decode", decodes, DECODES)):
        if set(given) - set(known):
            raise SystemExit(f"{flag}: unknown {sorted(set(given) - set(known))}; choose from {known}")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = build_tokenizer(data)
    prompts = prompt_examples(tokenizer, data, args.seq_len, args.batch_size).to(args.device)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    eos_ids = spread_eos_ids(len(tokenizer), eos, pad, args.eos_share, args.seed)
    with tempfile.TemporaryDirectory(prefix="compare_generate_") as tmp:
        dirs = save_models(tokenizer, tmp, args.n_layer, args.n_embd, args.n_head,
                           max(1024, args.seq_len + args.max_new_tokens), args.seed)
        model = AutoModelForCausalLM.from_pretrained(dirs.lm, dtype=torch.float32).to(args.device).eval()
    outputs, sides, pairs = {}, [], []
    for mode in modes:
        mine, peers = build_sides(args, model, prompts, eos_ids, pad, mode, outputs)
        peers = [] if args.no_peer else peers
        sides += mine + peers
        pairs += [(ours.name, peer.name) for ours in mine for peer in peers]
        pairs += [(ours.name, mine[0].name) for ours in mine[1:]]
    results = alternate(sides, args.repeats, args.warmup)
    notes = greedy_notes(outputs, decodes, no_peer=args.no_peer) if "greedy" in modes else []
    skipped = {"HF generate": "--no_peer"} if args.no_peer else {}
    header = (f"{model_description(args, dirs, len(tokenizer))}; {data} prompts; batch {args.batch_size} x "
              f"{args.seq_len} prompt tokens + {args.max_new_tokens} new tokens, {args.steps} calls per run; "
              f"median of {args.repeats} alternating runs (+{args.warmup} warm-up); {args.device}, "
              f"{torch.get_num_threads()} thread(s)")
    return report("compare_generate", args, header, results, ratios(results, pairs), skipped, notes)


if __name__ == "__main__":
    main()
