"""Memory, speed and quality of full-precision and quantized inference on a real 135M chat model.

    python benchmarks/bench_quantization.py                         # SmolLM2-135M-Instruct from ../shared
    python benchmarks/bench_quantization.py --modes fp32,4bit --n_texts 10 --json out.json

For each mode: model memory (parameters + buffers, packed quantized data included), greedy decoding
speed (a fixed chat prompt, exactly ``--new_tokens`` tokens, median of ``--repeats`` runs, through the
same generation loop as ``minichatgpt serve``), and perplexity on the first ``--n_texts`` texts of
``c4_demo.jsonl`` cut to ``--max_length`` tokens. Modes:

* ``fp32``, ``bf16``: plain weights in that dtype;
* ``8bit``: int8 weight-only (torchao on CPU, bitsandbytes LLM.int8() on CUDA), float32 activations;
  ``8bit-bf16`` does the same on a bfloat16 model;
* ``4bit``: int4 weight-only (torchao ``Int4OpaqueTensor`` on CPU, bfloat16 activations; bitsandbytes
  NF4 on CUDA).

The GGUF file is dequantized once and cached as a ``save_pretrained`` directory (``--cache_dir``).
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

from minichatgpt.nn import load_model, load_tokenizer
from minichatgpt.serving.engine import encode_chat, generate_tokens
from minichatgpt.serving.quant import model_memory_bytes, quantize_model

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared")
DEFAULT_GGUF = os.path.join(SHARED, "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_DATA = os.path.join(SHARED, "data", "c4_demo.jsonl")
DEFAULT_CACHE = os.environ.get("MINICHATGPT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "minichatgpt"))
PROMPT = "Write a short story about a robot who learns to paint."
MODES = {  # mode: (load dtype, quantization)
    "fp32": (torch.float32, None), "bf16": (torch.bfloat16, None), "8bit": (torch.float32, "8bit"),
    "8bit-bf16": (torch.bfloat16, "8bit"), "4bit": (torch.float32, "4bit"),
}


def converted_copy(gguf_path: str, cache_dir: str) -> str:
    """A ``save_pretrained`` copy of a GGUF model (dequantized to float32), made once."""
    out = os.path.join(cache_dir, os.path.splitext(os.path.basename(gguf_path))[0])
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    from transformers import AutoModelForCausalLM

    print(f"converting {gguf_path} -> {out} (once)", file=sys.stderr)
    model, tokenizer = load_model(gguf_path), load_tokenizer(gguf_path)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; the weights are
    # already dequantized, so a fresh model from the same config takes them as they are.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def read_texts(path: str, n: int):
    with open(path) as f:
        return [json.loads(line)["text"] for line, _ in zip(f, range(n))]


@torch.inference_mode()
def perplexity(model, tokenizer, texts, max_length: int) -> float:
    """exp(mean next-token negative log-likelihood) over all predicted tokens of ``texts``."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"].to(device)
        if ids.size(1) < 2:
            continue
        logits = model(input_ids=ids).logits[0, :-1].float()  # (T - 1, V)
        nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += ids.size(1) - 1
    return math.exp(nll / count)


def decode_speed(model, prompt_ids, new_tokens: int) -> float:
    """Tokens per second of one greedy generation of exactly ``new_tokens`` tokens (prefill included)."""
    start = time.perf_counter()
    produced = sum(1 for _ in generate_tokens(model, prompt_ids, new_tokens, temperature=0.0, top_p=1.0))
    return produced / (time.perf_counter() - start)


def build(mode: str, model_dir: str, device: torch.device):
    """(model, seconds to load and quantize) for one mode."""
    dtype, quant = MODES[mode]
    start = time.perf_counter()
    model = load_model(model_dir, dtype=dtype).eval()
    model = quantize_model(model, quant, device) if quant else model.to(device)
    return model, time.perf_counter() - start


def compute_dtype(model) -> str:
    return str(next(p for p in model.parameters() if p.is_floating_point()).dtype).replace("torch.", "")


def bench(modes, model_dir: str, tokenizer, texts, args, device: torch.device):
    """One row per mode. Speed runs go round-robin over the modes, ``--repeats`` times, so that load from
    other processes on a shared machine falls on every mode alike; the median is reported."""
    prompt_ids = encode_chat(tokenizer, [{"role": "user", "content": PROMPT}])
    models, rows = {}, {}
    for mode in modes:
        model, load_s = build(mode, model_dir, device)
        models[mode] = model
        greedy = tokenizer.decode(list(generate_tokens(model, prompt_ids, 24, 0.0, 1.0)), skip_special_tokens=True)
        rows[mode] = {"mode": mode, "compute_dtype": compute_dtype(model),
                      "memory_mib": model_memory_bytes(model) / 2 ** 20, "load_s": load_s,
                      "perplexity": perplexity(model, tokenizer, texts, args.max_length), "greedy_start": greedy}
        print(json.dumps(rows[mode]), file=sys.stderr, flush=True)
    speeds = {mode: [] for mode in modes}
    for _ in range(args.repeats):
        for mode in modes:
            speeds[mode].append(decode_speed(models[mode], prompt_ids, args.new_tokens))
    for mode in modes:
        rows[mode]["tokens_per_s"] = statistics.median(speeds[mode])
        rows[mode]["tokens_per_s_runs"] = speeds[mode]
    return [rows[mode] for mode in modes]


def markdown(rows) -> str:
    lines = ["| mode | weights / compute | model memory (MiB) | tokens/s | perplexity | load + quantize (s) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['compute_dtype']} | {r['memory_mib']:.1f} | {r['tokens_per_s']:.1f} | "
                     f"{r['perplexity']:.2f} | {r['load_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", default=DEFAULT_GGUF)
    parser.add_argument("--model", default=None, help="a save_pretrained directory instead of --gguf")
    parser.add_argument("--cache_dir", default=DEFAULT_CACHE)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--modes", default="fp32,bf16,8bit,4bit", help=f"comma-separated, from {list(MODES)}")
    parser.add_argument("--n_texts", type=int, default=20)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for path in ([args.data] + ([] if args.model else [args.gguf])):
        if not os.path.exists(path):
            raise SystemExit(f"{path} does not exist (the shared/ folder is not in a fresh clone)")
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}; choose from {list(MODES)}")

    model_dir = args.model or converted_copy(args.gguf, args.cache_dir)
    tokenizer = load_tokenizer(model_dir)
    texts = read_texts(args.data, args.n_texts)
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]
    rows = bench(modes, model_dir, tokenizer, texts, args, device)
    print(f"{os.path.basename(model_dir)} on {device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}); {args.new_tokens} greedy tokens, "
          f"median of {args.repeats} round-robin runs; perplexity on {len(texts)} texts x {args.max_length} "
          f"tokens; 1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print(markdown(rows))
    for r in rows:
        print(f"  {r['mode']}: {r['greedy_start']!r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
