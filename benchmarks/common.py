"""What the training benchmarks share: GPT-2 size presets, random token data, a matmul reference,
per-rank peak memory, the result table and the JSONL record; and the SFT / reward-model benchmark.

Scripts import this module by name (``from common import ...``): ``python benchmarks/benchmark_sft.py``
and ``torchrun ... benchmarks/benchmark_sft.py`` both put ``benchmarks/`` first on ``sys.path``.

FLOP estimate (Kaplan et al. 2020, arXiv:2001.08361): ``2 * N * tokens`` for a forward pass of an
N-parameter model, ``6 * N * tokens`` for forward plus backward; the attention term (about
``2 * n_layer * T * d`` per token) is ignored, so short sequences are counted well and long ones
under-counted. With LoRA the estimate keeps ``6 * N`` (an upper bound: frozen weights need no weight
gradients).
"""

import argparse
import json
import os
import platform
import resource
import sys
import time
from datetime import datetime, timezone
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import transformers
from torch.utils.data import Dataset
from transformers import GPT2Config

from minichatgpt.trainer.strategies import PRECISIONS, STRATEGY_NAMES, Strategy, build_strategy
from minichatgpt.trainer.strategies.precision import as_dtype
from minichatgpt.trainer.strategies.utils import set_seed
from minichatgpt.trainer.utils import count_parameters

HERE = os.path.dirname(os.path.abspath(__file__))
GPT2_VOCAB = 50257

# name: (n_embd, n_layer, n_head, default vocab_size, n_positions). Sizes: see README.md (parameter table).
# s..xl are the GPT-2 sizes (Radford et al. 2019); 2b..10b the widths/depths of the original ColossalChat
# benchmark; 13b and 175b the GPT-3 shapes (Brown et al. 2020). tiny/xxs/xs are for CPU runs.
PRESETS: Dict[str, tuple] = {
    "tiny": (128, 4, 4, 2048, 1024),
    "xxs": (192, 6, 6, 4096, 1024),
    "xs": (384, 6, 6, 4096, 1024),
    "s": (768, 12, 12, GPT2_VOCAB, 1024),
    "m": (1024, 24, 16, GPT2_VOCAB, 1024),
    "l": (1280, 36, 20, GPT2_VOCAB, 1024),
    "xl": (1600, 48, 25, GPT2_VOCAB, 1024),
    "2b": (2048, 40, 16, GPT2_VOCAB, 1024),
    "4b": (2304, 64, 16, GPT2_VOCAB, 1024),
    "6b": (4096, 30, 16, GPT2_VOCAB, 1024),
    "8b": (4096, 40, 16, GPT2_VOCAB, 1024),
    "10b": (4096, 50, 16, GPT2_VOCAB, 1024),
    "13b": (5120, 40, 40, GPT2_VOCAB, 2048),
    "175b": (12288, 96, 96, GPT2_VOCAB, 2048),
}


def gpt_config(preset: str, vocab_size: Optional[int] = None) -> GPT2Config:
    """The GPT-2 config of a size preset; token 0 is the pad (random data never uses it)."""
    n_embd, n_layer, n_head, default_vocab, n_positions = PRESETS[preset]
    return GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head, vocab_size=vocab_size or default_vocab,
                      n_positions=n_positions, pad_token_id=0, bos_token_id=1, eos_token_id=1)


def preset_parameters(preset: str, vocab_size: Optional[int] = None) -> int:
    """Parameter count of a preset's causal LM (tied embeddings counted once), built on the meta device."""
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(gpt_config(preset, vocab_size))
    return count_parameters(model)


def add_common_arguments(parser: argparse.ArgumentParser, default_strategy: str = "ddp") -> None:
    parser.add_argument("--model", default="s", choices=tuple(PRESETS), help="size preset (GPT-2 architecture)")
    parser.add_argument("--strategy", default=default_strategy, choices=STRATEGY_NAMES,
                        help="compute backend; distributed ones under torchrun")
    parser.add_argument("--lora_rank", type=int, default=0, help="> 0 trains LoRA adapters of this rank only")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="compute dtype (see minichatgpt.trainer.strategies.precision); the matmul reference "
                             "is measured in it too. Default: fp32 (fp16 for the colossalai strategies)")
    parser.add_argument("--vocab_size", type=int, default=None,
                        help=f"default: {GPT2_VOCAB} for the GPT-2 presets, 2048-4096 for tiny/xxs/xs")
    parser.add_argument("--cuda_mem_frac", type=float, default=1.0,
                        help="torch.cuda.set_per_process_memory_fraction (CUDA only)")
    parser.add_argument("--matmul_size", type=int, default=None,
                        help="square matmul size of the reference FLOP/s (default 4096 on CUDA, 1024 on CPU)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--results", default=None, help="JSONL file the result line is appended to")


def setup(args: argparse.Namespace) -> Strategy:
    """Build the strategy (joins the process group), seed, and cap CUDA memory if asked."""
    args.load_average_1m_start = os.getloadavg()[0]  # goes to the record, next to the one at the end
    strategy = build_strategy(args.strategy, precision=args.precision)
    set_seed(args.seed)
    if strategy.device.type == "cuda" and args.cuda_mem_frac < 1.0:
        torch.cuda.set_per_process_memory_fraction(args.cuda_mem_frac, strategy.device)
    return strategy


class TensorDataset(Dataset):
    """Rows of equally long tensors as dicts (the default collate stacks them into a batch)."""

    def __init__(self, tensors: Dict[str, torch.Tensor]):
        self.tensors = tensors
        self.length = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return {name: t[index] for name, t in self.tensors.items()}


def random_ids(num_rows: int, seq_len: int, vocab_size: int, seed: int) -> torch.Tensor:
    """(num_rows, seq_len) token ids drawn uniformly from [1, vocab_size): id 0 is the pad."""
    return torch.randint(1, vocab_size, (num_rows, seq_len), generator=torch.Generator().manual_seed(seed))


def synchronize(strategy: Strategy) -> None:
    if strategy.device.type == "cuda":
        torch.cuda.synchronize(strategy.device)


def matmul_tflops(strategy: Strategy, size: Optional[int] = None, dtype: torch.dtype = torch.float32,
                  min_seconds: float = 0.5, min_repeats: int = 3) -> float:
    """Measured TFLOPS of a square ``size`` x ``size`` matmul (2 * size^3 FLOPs) on this rank's device,
    repeated for at least ``min_seconds``.

    Every rank measures at the same time (after a barrier), as they compute at the same time in training,
    so on a CPU shared by several ranks each gets the share of cores it gets in training.
    """
    size = size or (4096 if strategy.device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=strategy.device, dtype=dtype)
    b = torch.randn(size, size, device=strategy.device, dtype=dtype)
    a @ b  # warm-up (kernel selection, allocator)
    strategy.barrier()
    synchronize(strategy)
    start, repeats = time.perf_counter(), 0
    while repeats < min_repeats or time.perf_counter() - start < min_seconds:
        a @ b
        repeats += 1
        if strategy.device.type == "cuda" and repeats % 8 == 0:
            synchronize(strategy)  # let the clock see the queued kernels
    synchronize(strategy)
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e12


class MatmulReference:
    """The matmul TFLOPS of every rank, measured before and after the timed span and averaged, so that a
    burst of load from other processes on a shared machine weighs less on the ratio."""

    def __init__(self, strategy: Strategy, size: Optional[int]):
        self.strategy, self.size, self.samples = strategy, size, []

    def measure(self) -> None:
        dtype = as_dtype(self.strategy.precision)  # the rate of the dtype training computes in
        self.samples.append(gather(matmul_tflops(self.strategy, self.size, dtype)))

    def per_rank(self) -> List[float]:
        return [sum(s[r] for s in self.samples) / len(self.samples) for r in range(len(self.samples[0]))]


def peak_memory_bytes(strategy: Strategy) -> int:
    """This rank's peak: CUDA max allocated on a GPU, else the process's peak resident set size (RSS;
    everything the process ever held, Python, torch and imported libraries included)."""
    if strategy.device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(strategy.device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order (a list of one without a process group)."""
    if not dist.is_initialized():
        return [obj]
    objects = [None] * dist.get_world_size()
    dist.all_gather_object(objects, obj)
    return objects


def aggregate(per_rank: Sequence[Dict[str, dict]], with_overall: bool) -> Dict[str, dict]:
    """Per phase over all ranks: wall time is the slowest rank's, work (samples, tokens, FLOPs) the sum.

    Args:
        per_rank: each rank's ``{phase: {"time", "samples", "tokens", "flops"}}`` (PerformanceEvaluator totals).
        with_overall: add an ``overall`` row: every phase's time and FLOPs, the generation phase's samples and
            tokens (end-to-end RLHF throughput: rollouts per second).
    Returns:
        ``{phase: {time_s, samples, tokens, flops, samples_per_s, tokens_per_s, tflops, tflops_per_rank}}``.
    """
    world = len(per_rank)
    phases = list(per_rank[0])
    rows = {}
    for phase in phases:
        rows[phase] = {"time_s": max(r[phase]["time"] for r in per_rank),
                       **{k: sum(r[phase][k] for r in per_rank) for k in ("samples", "tokens", "flops")}}
    if with_overall:
        generation = rows.get("generation", {"samples": 0, "tokens": 0})
        rows["overall"] = {"time_s": max(sum(p["time"] for p in r.values()) for r in per_rank),
                           "samples": generation["samples"], "tokens": generation["tokens"],
                           "flops": sum(rows[p]["flops"] for p in phases)}
    for row in rows.values():
        seconds = max(row["time_s"], 1e-9)
        row.update(samples_per_s=row["samples"] / seconds, tokens_per_s=row["tokens"] / seconds,
                   tflops=row["flops"] / seconds / 1e12, tflops_per_rank=row["flops"] / seconds / 1e12 / world)
    return rows


def report(strategy: Strategy, rows: Dict[str, dict], matmul: MatmulReference) -> dict:
    """Peak memory of every rank and the training/matmul ratio; a collective call (every rank)."""
    peaks = gather(peak_memory_bytes(strategy))
    per_rank = matmul.per_rank()
    mean = sum(per_rank) / len(per_rank)
    return {"phases": rows,
            "peak_memory": {"kind": "cuda_max_allocated" if strategy.device.type == "cuda" else "cpu_peak_rss",
                            "max_bytes": max(peaks), "per_rank_bytes": peaks},
            "matmul_tflops_per_rank": mean, "matmul_tflops_ranks": per_rank, "matmul_tflops_samples": matmul.samples,
            "training_matmul_fraction": rows["training"]["tflops_per_rank"] / mean}


def format_table(results: dict, matmul_desc: str) -> str:
    """The per-phase table, then peak memory and the matmul reference."""
    lines = [f"{'phase':<12}{'time (s)':>10}{'samples/s':>12}{'tokens/s':>12}{'TFLOPS':>10}{'TFLOPS/rank':>13}"]
    for phase, r in results["phases"].items():
        lines.append(f"{phase:<12}{r['time_s']:>10.2f}{r['samples_per_s']:>12.2f}{r['tokens_per_s']:>12.1f}"
                     f"{r['tflops']:>10.4f}{r['tflops_per_rank']:>13.4f}")
    memory = results["peak_memory"]
    what = "CUDA max allocated" if memory["kind"] == "cuda_max_allocated" else "CPU peak RSS"
    per_rank = ", ".join(f"{b / 2 ** 20:.0f}" for b in memory["per_rank_bytes"])
    lines.append(f"peak memory ({what}): max {memory['max_bytes'] / 2 ** 20:.0f} MiB over "
                 f"{len(memory['per_rank_bytes'])} rank(s); per rank [{per_rank}] MiB")
    lines.append(f"matmul reference ({matmul_desc}): {results['matmul_tflops_per_rank']:.4f} TFLOPS per rank; "
                 f"training-phase fraction of matmul throughput: {100 * results['training_matmul_fraction']:.1f}%")
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    from compare_common import cpu_name  # a light module (torch only), importable wherever this one is

    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def environment(strategy: Strategy) -> dict:
    """Where and with what the numbers were taken (the 1-minute load average tells how busy a shared
    machine was)."""
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    for name in ("deepspeed", "colossalai"):
        if name in sys.modules:
            versions[name] = getattr(sys.modules[name], "__version__", "?")
    return {"world_size": strategy.world_size, "device": str(strategy.device),
            "device_name": device_name(strategy.device), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_1m_end": os.getloadavg()[0],
            "hostname": platform.node(), "versions": versions}


def append_result(path: str, record: dict) -> None:
    """Append one JSON line (call on rank 0 only)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def record(benchmark: str, args: argparse.Namespace, strategy: Strategy, params: dict, results: dict,
           **extra) -> dict:
    config = dict(vars(args))
    load_start = config.pop("load_average_1m_start", None)
    return {"benchmark": benchmark, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": config, **environment(strategy), "load_average_1m_start": load_start, "params": params,
            "results": results, **extra}


# ----------------------------------------------------------------------------------------------
# SFT and reward-model training throughput (benchmark_sft.py, benchmark_rm.py)
# ----------------------------------------------------------------------------------------------
def build_supervised_parser(stage: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    add_common_arguments(parser)
    parser.add_argument("--batch_size", type=int, default=8,
                        help="sequences (SFT) or pairs (RM) per rank per step")
    parser.add_argument("--seq_len", type=int, default=512, help="tokens per sequence (each half of an RM pair)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup_steps", type=int, default=2, help="untimed steps first")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--grad_checkpoint", action="store_true", help="gradient checkpointing")
    parser.set_defaults(results=os.path.join(HERE, "results", f"{stage}.jsonl"))
    return parser


def _supervised_data(stage: str, num_rows: int, seq_len: int, vocab_size: int, seed: int) -> TensorDataset:
    mask = torch.ones(num_rows, seq_len, dtype=torch.long)
    if stage == "sft":
        ids = random_ids(num_rows, seq_len, vocab_size, seed)
        return TensorDataset({"input_ids": ids, "attention_mask": mask, "labels": ids})
    return TensorDataset({"chosen_input_ids": random_ids(num_rows, seq_len, vocab_size, seed),
                          "chosen_attention_mask": mask,
                          "rejected_input_ids": random_ids(num_rows, seq_len, vocab_size, seed + 1),
                          "rejected_attention_mask": mask})


def run_supervised(stage: str, args: argparse.Namespace) -> dict:
    """Time ``--steps`` optimizer steps of the library's SFTTrainer (``stage="sft"``) or RewardModelTrainer
    (``"rm"``) on random full-length sequences, after ``--warmup_steps`` untimed ones.

    ``fit`` runs twice: a warm-up loader, then the timed loader (on a fresh trainer); the timed span includes
    everything ``fit`` does per step (device moves, forward, backward, clipping, optimizer step).
    Returns the JSON record (on every rank; rank 0 prints it and appends it to ``--results``).
    """
    from minichatgpt.nn import LM, RewardModel
    from minichatgpt.trainer import RewardModelTrainer, SFTTrainer

    strategy = setup(args)
    config = gpt_config(args.model, args.vocab_size)
    if args.seq_len > config.n_positions:
        raise SystemExit(f"--seq_len {args.seq_len} exceeds preset {args.model!r}'s {config.n_positions} positions")
    model_cls, trainer_cls = (LM, SFTTrainer) if stage == "sft" else (RewardModel, RewardModelTrainer)
    with strategy.model_init_context():
        model = model_cls(config=config, checkpoint=args.grad_checkpoint, lora_rank=args.lora_rank)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    model, optim = strategy.prepare((model, optim))
    module = strategy.unwrap_model(model)
    params = {"model": count_parameters(module), "trainable": count_parameters(module, trainable_only=True)}
    # Every step logs (a mean over one step), so the returned metrics hold the last step's loss. One trainer
    # per fit: a trainer resumes at its data position, so a second fit on the same one would skip batches.
    def trainer():
        return trainer_cls(model, strategy, optim, max_epochs=1, log_interval=1)

    world, rows_per_step = strategy.world_size, args.batch_size * strategy.world_size
    vocab = config.vocab_size
    if args.warmup_steps > 0:
        warmup = _supervised_data(stage, args.warmup_steps * rows_per_step, args.seq_len, vocab, args.seed + 100)
        trainer().fit(strategy.setup_dataloader(warmup, args.batch_size, shuffle=False, drop_last=True))
    timed = _supervised_data(stage, args.steps * rows_per_step, args.seq_len, vocab, args.seed)
    loader = strategy.setup_dataloader(timed, args.batch_size, shuffle=False, drop_last=True)
    matmul = MatmulReference(strategy, args.matmul_size)
    matmul.measure()

    strategy.barrier()
    synchronize(strategy)
    start = time.perf_counter()
    metrics = trainer().fit(loader)
    synchronize(strategy)
    seconds = time.perf_counter() - start
    matmul.measure()

    samples = args.steps * args.batch_size  # this rank's sequences (SFT) or pairs (RM)
    tokens = samples * args.seq_len * (1 if stage == "sft" else 2)  # an RM pair is two sequences
    totals = {"training": {"time": seconds, "samples": samples, "tokens": tokens,
                           "flops": 6 * params["model"] * tokens}}
    results = report(strategy, aggregate(gather(totals), with_overall=False), matmul)
    result = record(stage, args, strategy, params, results, metrics=metrics,
                    global_batch_size=world * args.batch_size)
    if strategy.is_rank0():
        print(f"\n{stage}: preset {args.model} ({params['model'] / 1e6:.1f}M parameters, "
              f"{params['trainable'] / 1e6:.1f}M trained), strategy {args.strategy} x {world}, "
              f"batch {args.batch_size}/rank x {args.seq_len} tokens, {args.steps} timed steps")
        print(format_table(results, matmul_description(strategy, args)))
        append_result(args.results, result)
        print(f"result appended to {args.results}")
    return result


def matmul_description(strategy: Strategy, args: argparse.Namespace) -> str:
    size = args.matmul_size or (4096 if strategy.device.type == "cuda" else 1024)
    return f"{strategy.precision} {size}x{size} on {strategy.device.type}, {torch.get_num_threads()} thread(s)"
