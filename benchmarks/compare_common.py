"""What the side-by-side comparisons (``benchmarks/compare_*.py``) share: one tiny GPT-2 saved to disk that
both sides load, fixed-length data, alternating timed runs, the table and the JSONL record.

The comparison scripts import this module by name (``from compare_common import ...``), with
``benchmarks/`` first on ``sys.path``. It imports only torch at module level (transformers, and
minichatgpt for the data helpers, inside functions), so that the PPO peer worker can import it from a
separate virtual environment that holds an old TRL and no minichatgpt. The scripts against TRL's current
trainers (SFT, RM, DPO, GRPO) are declared through ``compare_trl.py`` on top of it.

Fairness rules every script follows (each script's docstring lists what still differs):

* the same weights: one randomly initialized GPT-2 (``--n_layer`` x ``--n_embd``, dropout 0) is saved with
  ``save_pretrained``; both sides load that directory (a causal LM, and a sequence-classification copy
  with the same backbone and a one-output ``score`` head for reward models, critics and value models);
* the same tokens: the data are tokenized once (through minichatgpt's datasets) and every example is cut to
  exactly ``--seq_len`` tokens (shorter ones are left out; too few are cycled), so neither side pads and
  the batch order cannot change the work;
* the same optimizer (``torch.optim.AdamW``, weight decay 0, constant learning rate), batch size, number of
  optimizer steps, float32, no gradient checkpointing, no evaluation, no checkpoint saving, no
  gradient accumulation, and ``--threads`` torch threads for both (set once per process);
* only the training (or generation) call is timed; model loading and dataset preparation are not.
  Sides run alternately (A B A B ...), ``--warmup`` untimed rounds first, and the median of ``--repeats``
  timed rounds is reported, so that load from other processes falls on both sides alike.

Each run records wall-clock time and the CPU time (user + system) of the process that did the work. On
a CPU shared with other jobs the wall clock swings with their load while CPU time mostly does not, so
with ``--threads 1`` tokens per CPU second is the steadier measure there; on an idle machine or a GPU,
read the wall-clock figures. ``ratio`` rows are minichatgpt throughput / peer throughput, from both:
above 1 minichatgpt is faster.
"""

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.join(REPO, "..", "shared")
GPT2_TOKENIZER = os.path.join(SHARED, "tokenizers", "gpt2")
SHARED_DATA = os.path.join(SHARED, "data")
DEFAULT_RESULTS = os.path.join(HERE, "results", "compare.jsonl")
PAD_TOKEN = "<|pad|>"  # GPT-2 has no pad token; a distinct one keeps EOS and padding apart on both sides


# ----------------------------------------------------------------------------------------------
# arguments, threads, environment
# ----------------------------------------------------------------------------------------------
def add_common_arguments(parser: argparse.ArgumentParser, steps: int, batch_size: int, seq_len: int,
                         lr: float) -> None:
    parser.add_argument("--steps", type=int, default=steps, help="optimizer steps (or calls) per timed run")
    parser.add_argument("--batch_size", type=int, default=batch_size)
    parser.add_argument("--seq_len", type=int, default=seq_len, help="tokens per sequence, exactly")
    parser.add_argument("--lr", type=float, default=lr, help="AdamW learning rate (constant)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per side first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--n_embd", type=int, default=256)
    parser.add_argument("--n_head", type=int, default=4)
    parser.add_argument("--data", default="auto", choices=("auto", "shared", "demo"),
                        help="shared: real samples from ../shared/data with the GPT-2 BPE tokenizer; demo: "
                             "minichatgpt's generated demo data and word tokenizer; auto: shared when present")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no_peer", action="store_true", help="run the minichatgpt side only")
    parser.add_argument("--results", default=DEFAULT_RESULTS, help="JSONL file to append to ('' to skip)")


def set_threads(threads: int) -> None:
    """The same number of intra-op threads for every side (child processes inherit OMP_NUM_THREADS)."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def resolve_data(data: str) -> str:
    if data == "auto":
        return "shared" if os.path.isdir(GPT2_TOKENIZER) and os.path.isdir(SHARED_DATA) else "demo"
    if data == "shared" and not os.path.isdir(GPT2_TOKENIZER):
        raise SystemExit(f"{GPT2_TOKENIZER} is absent (the shared/ folder is not in a fresh clone); use --data demo")
    return data


def version_of(package: str) -> Optional[str]:
    if importlib.util.find_spec(package) is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    import transformers

    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else cpu_name()
    return {"device": device, "device_name": device_name, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average_1m": os.getloadavg()[0],
            "hostname": platform.node(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "minichatgpt": version_of("minichatgpt"),
                         "trl": version_of("trl")}}


# ----------------------------------------------------------------------------------------------
# tokenizer and models
# ----------------------------------------------------------------------------------------------
def build_tokenizer(data: str):
    """The GPT-2 BPE tokenizer (plus a pad token) for ``shared`` data, the demo word tokenizer for ``demo``."""
    if data == "demo":
        from minichatgpt.demo import build_word_tokenizer

        return build_word_tokenizer()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


class ModelDirs(NamedTuple):
    lm: str  # GPT2LMHeadModel + tokenizer
    classifier: str  # GPT2ForSequenceClassification (num_labels=1): the same backbone, a random score head
    num_parameters: int  # of the causal LM (tied embeddings counted once)


def save_models(tokenizer, directory: str, n_layer: int, n_embd: int, n_head: int, n_positions: int,
                seed: int) -> ModelDirs:
    """One random GPT-2 (dropout 0) saved twice: as a causal LM and as a one-label sequence classifier."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, num_labels=1)
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(config)
    classifier = AutoModelForSequenceClassification.from_config(config)
    classifier.transformer.load_state_dict(lm.transformer.state_dict())
    dirs = ModelDirs(os.path.join(directory, "lm"), os.path.join(directory, "classifier"),
                     sum(p.numel() for p in lm.parameters()))
    for model, path in ((lm, dirs.lm), (classifier, dirs.classifier)):
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return dirs


def model_description(args: argparse.Namespace, dirs: ModelDirs, vocab_size: int) -> str:
    return (f"GPT-2 {args.n_layer} layers x {args.n_embd} wide, vocab {vocab_size} "
            f"({dirs.num_parameters / 1e6:.1f}M parameters)")


# ----------------------------------------------------------------------------------------------
# fixed-length data (tokenized once, through minichatgpt's datasets)
# ----------------------------------------------------------------------------------------------
def _fixed_length(kind: str, tokenizer, data: str, seq_len: int, n: int, fits: Callable[[dict], bool],
                  what: str) -> List[dict]:
    """``n`` examples of minichatgpt's ``{kind}Dataset`` (SFT, Preference, Prompt) that ``fits`` keeps, cycled:
    the demo's records of that kind, or its file in ``../shared/data``."""
    import minichatgpt.data
    from minichatgpt import demo

    if data == "demo":
        records = {"SFT": demo.sft_records, "Preference": demo.preference_records, "Prompt": demo.prompt_records}
        source = records[kind](max(4 * n, 64), seed={"SFT": 0, "Preference": 1, "Prompt": 2}[kind])
    else:
        source = os.path.join(SHARED_DATA, "alpaca_en_demo.json" if kind == "SFT"
                              else "hh_rlhf_harmless_base_test.jsonl.gz")
    dataset = getattr(minichatgpt.data, f"{kind}Dataset")(source, tokenizer, max_len=seq_len)
    kept = [e for e in dataset.examples if fits(e)]
    if not kept:
        raise SystemExit(f"no {what} reaches {seq_len} tokens; lower --seq_len")
    return [kept[i % len(kept)] for i in range(n)]


def sft_examples(tokenizer, data: str, seq_len: int, n: int) -> List[Dict[str, torch.Tensor]]:
    """``n`` demonstrations of exactly ``seq_len`` tokens: ``{"input_ids", "labels"}`` (prompt labels -100)."""
    return _fixed_length("SFT", tokenizer, data, seq_len, n, lambda e: len(e["input_ids"]) == seq_len,
                         "demonstration")


def preference_examples(tokenizer, data: str, seq_len: int, n: int) -> List[Dict[str, torch.Tensor]]:
    """``n`` pairs whose chosen and rejected sides are both exactly ``seq_len`` tokens."""
    return _fixed_length("Preference", tokenizer, data, seq_len, n,
                         lambda e: len(e["chosen_input_ids"]) == len(e["rejected_input_ids"]) == seq_len,
                         "preference pair")


def prompt_examples(tokenizer, data: str, prompt_len: int, n: int) -> torch.Tensor:
    """(n, prompt_len) prompt ids, each prompt exactly ``prompt_len`` tokens (its tail kept), no padding."""
    kept = _fixed_length("Prompt", tokenizer, data, prompt_len, n, lambda e: len(e["input_ids"]) == prompt_len,
                         "prompt")
    return torch.stack([e["input_ids"] for e in kept])


# ----------------------------------------------------------------------------------------------
# timing, table, record
# ----------------------------------------------------------------------------------------------
class Timing(NamedTuple):
    seconds: float  # wall clock
    cpu_seconds: float  # CPU time of the process that did the work (user + system, all its threads)
    tokens: int  # tokens processed


class Side(NamedTuple):
    """One contender: ``run()`` does one complete timed run."""

    name: str
    run: Callable[[], Timing]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Stopwatch:
    """Wall and process CPU time of a ``with`` block (the device synchronized at both ends)."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)
        self.start = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start[0]
        self.cpu_seconds = time.process_time() - self.start[1]

    def timing(self, tokens: int) -> Timing:
        return Timing(self.seconds, self.cpu_seconds, tokens)


def alternate(sides: Sequence[Side], repeats: int, warmup: int) -> Dict[str, dict]:
    """Run the sides in turn (A B A B ...), ``warmup`` untimed rounds then ``repeats`` timed ones.

    Returns ``{name: {"seconds": [...], "cpu_seconds": [...], "tokens", "median_s", "median_cpu_s",
    "tokens_per_s", "tokens_per_cpu_s"}}``.
    """
    runs: Dict[str, List[Timing]] = {side.name: [] for side in sides}
    for round_ in range(warmup + repeats):
        for side in sides:
            timing = side.run()
            tag = "warm-up" if round_ < warmup else "timed"
            print(f"  [{tag} {round_ + 1}/{warmup + repeats}] {side.name}: {timing.seconds:.2f} s "
                  f"({timing.cpu_seconds:.2f} s CPU), {timing.tokens} tokens", file=sys.stderr, flush=True)
            if round_ >= warmup:
                runs[side.name].append(timing)
    results = {}
    for name, timed in runs.items():
        tokens = statistics.median(t.tokens for t in timed)
        median = statistics.median(t.seconds for t in timed)
        median_cpu = statistics.median(t.cpu_seconds for t in timed)
        results[name] = {"seconds": [t.seconds for t in timed], "cpu_seconds": [t.cpu_seconds for t in timed],
                         "tokens": tokens, "median_s": median, "median_cpu_s": median_cpu,
                         "tokens_per_s": tokens / max(median, 1e-9), "tokens_per_cpu_s": tokens / max(median_cpu, 1e-9)}
    return results


def ratios(results: Dict[str, dict], pairs: Sequence[Tuple[str, str]]) -> List[dict]:
    """minichatgpt throughput over peer throughput, for each (minichatgpt side, peer side) in ``results``:
    ``ratio`` from wall-clock tokens/s, ``cpu_ratio`` from tokens per CPU second."""
    return [{"minichatgpt": ours, "peer": peer,
             "ratio": results[ours]["tokens_per_s"] / max(results[peer]["tokens_per_s"], 1e-9),
             "cpu_ratio": results[ours]["tokens_per_cpu_s"] / max(results[peer]["tokens_per_cpu_s"], 1e-9)}
            for ours, peer in pairs if ours in results and peer in results]


def format_table(results: Dict[str, dict], ratio_rows: Sequence[dict]) -> str:
    width = max([len(name) for name in results] + [4]) + 2
    lines = [f"{'side':<{width}}{'median s':>10}{'tokens/s':>11}{'CPU s':>9}{'tok/CPU s':>11}  runs: s (CPU s)"]
    for name, r in results.items():
        runs = " ".join(f"{s:.2f} ({c:.2f})" for s, c in zip(r["seconds"], r["cpu_seconds"]))
        lines.append(f"{name:<{width}}{r['median_s']:>10.3f}{r['tokens_per_s']:>11.1f}{r['median_cpu_s']:>9.3f}"
                     f"{r['tokens_per_cpu_s']:>11.1f}  {runs}")
    for row in ratio_rows:
        lines.append(f"ratio {row['minichatgpt']} / {row['peer']}: {row['ratio']:.2f} (tokens/s), "
                     f"{row['cpu_ratio']:.2f} (tokens per CPU second)")
    return "\n".join(lines)


def report(benchmark: str, args: argparse.Namespace, header: str, results: Dict[str, dict],
           ratio_rows: Sequence[dict], skipped: Dict[str, str], notes: Sequence[str] = (), **extra) -> dict:
    """Print the header, the table and the skipped peers; append the JSON record to ``--results``."""
    print(f"\n{benchmark}: {header}")
    print(format_table(results, ratio_rows))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    for note in notes:
        print(f"note: {note}")
    record = {"benchmark": benchmark, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "config": {k: v for k, v in vars(args).items() if k not in ("results", "worker")},
              **environment(args.device), "header": header, "results": results, "ratios": list(ratio_rows),
              "skipped": skipped, "notes": list(notes), **extra}
    if args.results:
        os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
        with open(args.results, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"appended to {args.results}")
    return record
