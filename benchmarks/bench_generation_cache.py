"""Does a static KV cache or ``torch.compile`` speed up rollouts here? Times one generation call per variant.

Variants (same random GPT-2, same prompts, greedy, fixed length; CPU time of this process and wall time,
median of ``--repeats`` after a warm-up call that also pays any compilation):

* ``minichatgpt``: ``minichatgpt.nn.generation.generate`` (dynamic cache, log-probs kept);
* ``hf``: Hugging Face ``generate`` with its default dynamic cache;
* ``hf_static``: ``generate(cache_implementation="static")``, a pre-allocated cache;
* ``hf_static_compiled``: the same with the decoding forward compiled by ``torch.compile`` (Inductor);
  the compilation time is reported separately.

    OMP_NUM_THREADS=1 python benchmarks/bench_generation_cache.py --n_embd 256 --n_layer 4 --prompt_len 64
"""

import argparse
import json
import os
import statistics
import time

import torch
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

from minichatgpt.nn.generation import generate


def timed(fn, repeats: int):
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    out = fn()  # warm-up (and compilation)
    first = {"wall_s": time.perf_counter() - start_wall, "cpu_s": time.process_time() - start_cpu}
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return out, {"first_call": first, "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n_embd", type=int, default=256)
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--vocab_size", type=int, default=50257)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="minichatgpt,hf,hf_static,hf_static_compiled")
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results", "generation_cache.jsonl"))
    args = parser.parse_args()

    torch.manual_seed(0)
    config = GPT2Config(n_embd=args.n_embd, n_layer=args.n_layer, n_head=max(args.n_embd // 64, 1),
                        vocab_size=args.vocab_size, n_positions=max(1024, args.prompt_len + args.max_new_tokens))
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(1, args.vocab_size, (args.batch_size, args.prompt_len))
    mask = torch.ones_like(ids)
    n, eos = args.max_new_tokens, args.vocab_size  # an id never produced: every row has full length

    def hf(**kwargs):
        config = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                                  eos_token_id=None, **kwargs)
        return lambda: model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, -n:]

    variants = {
        "minichatgpt": lambda: generate(model, ids, mask, n, eos_token_id=eos, pad_token_id=0,
                                        do_sample=False).sequences[:, -n:],
        "hf": hf(),
        "hf_static": hf(cache_implementation="static", disable_compile=True),
        "hf_static_compiled": hf(cache_implementation="static"),
    }
    tokens = args.batch_size * n
    rows, reference = {}, None
    with torch.no_grad():
        for name in args.variants.split(","):
            if name == "hf_static_compiled":
                model.forward = torch.compile(model.forward, dynamic=False)
            out, stats = timed(variants[name], args.repeats)
            reference = out if reference is None else reference
            stats.update(tokens_per_s_cpu=tokens / stats["cpu_s"], same_tokens=bool(torch.equal(out, reference)))
            rows[name] = stats
            print(f"{name:<20} cpu {stats['cpu_s']:7.3f} s  wall {stats['wall_s']:7.3f} s  "
                  f"{stats['tokens_per_s_cpu']:8.1f} tokens/cpu-s  first call {stats['first_call']['wall_s']:6.1f} s  "
                  f"same tokens {stats['same_tokens']}", flush=True)
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps({"config": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "results": rows}) + "\n")


if __name__ == "__main__":
    main()
