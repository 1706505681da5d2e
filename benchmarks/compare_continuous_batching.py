"""transformers' own continuous batching (``generate_batch``, paged attention cache) against minichatgpt's
decode core (``DecodeBatch``), on the CPU: does it run, are its greedy tokens those of ``generate`` run
on each prompt alone, and how long does a batch of prompts take.

    OMP_NUM_THREADS=1 python benchmarks/compare_continuous_batching.py                 # tiny GPT-2/OPT/BLOOM/LLaMA
    OMP_NUM_THREADS=1 python benchmarks/compare_continuous_batching.py --families smollm2 --max_new_tokens 32

Tiny models are built from configs (2 layers, random weights at a larger scale so greedy replies vary);
``smollm2`` is the SmolLM2-135M-Instruct GGUF converted once (see ``bench_quantization.py``). Both sides
get the same prompts of different lengths at once; ``generate_batch`` runs twice with a persistent
manager and its second call is timed (the first builds the manager); the decode core runs twice too.
"""

import argparse
import os
import sys
import time
import traceback

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from minichatgpt.nn.decoding import DecodeBatch, DecodeRequest, SamplingParams  # noqa: E402

TINY = {
    "gpt2": dict(model_type="gpt2", n_layer=2, n_embd=32, n_head=2, n_positions=128),
    "opt": dict(model_type="opt", num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=2,
                word_embed_proj_dim=32, max_position_embeddings=128),
    "bloom": dict(model_type="bloom", n_layer=2, hidden_size=32, n_head=2),
    "llama": dict(model_type="llama", num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128),
}


def build(family: str):
    if family == "smollm2":
        sys.path.insert(0, HERE)
        from bench_quantization import DEFAULT_CACHE, DEFAULT_GGUF, converted_copy

        return AutoModelForCausalLM.from_pretrained(converted_copy(DEFAULT_GGUF, DEFAULT_CACHE)).eval()
    from transformers import AutoConfig

    fields = dict(TINY[family])
    config = AutoConfig.for_model(fields.pop("model_type"), vocab_size=96, pad_token_id=0, bos_token_id=1,
                                  eos_token_id=1, **fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    return model


def prompts_for(num: int, vocab: int):
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(3, min(vocab, 1000), (4 + 5 * i,), generator=generator).tolist() for i in range(num)]


def alone(model, prompts, n):
    """Greedy tokens of ``generate`` on each prompt alone (no EOS)."""
    out = []
    for p in prompts:
        ids = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        out.append(ids[0, len(p):].tolist())
    return out


def hf_batch(model, prompts, n):
    config = GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=-1, pad_token_id=0)
    for _ in range(2):
        start = time.perf_counter()
        results = model.generate_batch(prompts, generation_config=config, persistent_manager=True)
        seconds = time.perf_counter() - start
    model.destroy_cached_continuous_batching_manager()
    return [r.generated_tokens for r in results.values()], seconds


def own_batch(model, prompts, n):
    for _ in range(2):
        start = time.perf_counter()
        batch, tokens = DecodeBatch(model), {}
        batch.add([DecodeRequest(p, SamplingParams(max_new_tokens=n, temperature=0.0), key=i)
                   for i, p in enumerate(prompts)])
        while len(batch):
            for request, event in batch.step():
                tokens.setdefault(request.key, []).append(event.token)
        seconds = time.perf_counter() - start
    return [tokens[i] for i in range(len(prompts))], seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default="gpt2,opt,bloom,llama")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=12)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print("| model | transformers generate_batch | its tokens = generate alone | its time (s) "
          "| DecodeBatch tokens = generate alone | DecodeBatch time (s) |")
    print("|---|---|---|---:|---|---:|")
    for family in args.families.split(","):
        model = build(family)
        prompts = prompts_for(args.prompts, model.config.vocab_size)
        expected = alone(model, prompts, args.max_new_tokens)
        own, own_s = own_batch(model, prompts, args.max_new_tokens)
        try:
            got, hf_s = hf_batch(model, prompts, args.max_new_tokens)
            status, same, hf_time = "runs", str(got == expected), f"{hf_s:.2f}"
        except Exception as error:  # a family it does not support: report, go on with the others
            traceback.print_exc(limit=1)
            status, same, hf_time = f"fails: {type(error).__name__}: {str(error)[:80]}", "-", "-"
        if status == "runs" and not any(got):
            status = "no tokens (the generation thread failed; see the log)"
        print(f"| {family} | {status} | {same} | {hf_time} | {own == expected} | {own_s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
