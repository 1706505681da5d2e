"""One process of a distributed strategy test, started by ``torchrun`` (see ``test_strategies.py``).

Every rank builds the same tiny GPT-2 actor, loads the initial weights the test wrote, and runs the
scenarios named on the command line through the trainer contract; results go to ``--out`` for the test
to compare with ``NaiveStrategy`` computed in the test process by the same functions.

    torchrun --nproc_per_node 2 tests/strategies/strategy_worker.py --strategy ddp --init init.pt --out DIR
"""

import argparse
import json
import os
import sys
from typing import Dict, List, Optional

import torch
from torch.distributed.elastic.multiprocessing.errors import record

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)  # the repository, when run as a script
sys.path.insert(0, os.path.join(ROOT, "tests"))  # conftest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import tiny_config  # noqa: E402
from minichatgpt.functional import lm_loss  # noqa: E402
from minichatgpt.nn import Actor  # noqa: E402
from minichatgpt.trainer.strategies import Strategy, build_strategy  # noqa: E402

VOCAB, SEQ_LEN, PER_RANK, MAX_NORM, LR = 77, 12, 2, 0.05, 1e-2
SCENARIOS = ("fail", "data", "step", "memory", "generate", "accum", "resume")


def make_actor(strategy: Strategy) -> Actor:
    with strategy.model_init_context():
        torch.manual_seed(0)
        # No dropout: ranks draw different random masks than one process would.
        return Actor(config=dict(tiny_config("gpt2", VOCAB), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def global_batch(step: int, rows: int) -> torch.Tensor:
    """(rows, SEQ_LEN) token ids, the same on every rank; rank r of W trains on rows [r*rows/W, (r+1)*rows/W)."""
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randint(3, VOCAB, (rows, SEQ_LEN), generator=generator)


def prepared_actor(strategy: Strategy, init_path: str):
    actor = make_actor(strategy)
    # eps well above float noise in near-zero gradients, where Adam would otherwise amplify it
    optim = torch.optim.AdamW(actor.parameters(), lr=LR, eps=1e-6, weight_decay=0.01)
    actor, optim = strategy.prepare((actor, optim))
    strategy.load_model(actor, init_path)
    return actor, optim


def train_step(strategy: Strategy, actor, optim, step: int, micro_batches: int = 1, ranks: int = 2) -> float:
    """One optimizer step on the global batch of ``step``: ``ranks * micro_batches * PER_RANK`` rows.

    A distributed strategy gives each of its ``ranks`` processes ``micro_batches`` micro-batches of
    PER_RANK rows; a single process (naive) takes the whole global batch in one backward. The loss is a
    mean over equal-sized parts, so all of them see the same gradient.
    """
    rows = global_batch(step, ranks * micro_batches * PER_RANK)
    if strategy.world_size == 1:
        parts = [rows]
    else:
        assert strategy.world_size == ranks
        parts = list(rows.view(micro_batches, ranks, PER_RANK, SEQ_LEN)[:, strategy.rank])
    for part in parts:
        part = part.to(strategy.device)
        logits = actor(part, torch.ones_like(part))  # (B, T, V)
        strategy.backward(lm_loss(logits, part) / len(parts), actor, optim)
    norm = strategy.clip_grad_norm(actor, optim, MAX_NORM)
    strategy.optimizer_step(optim, actor)
    return float(norm)


def prompts() -> Dict[str, torch.Tensor]:
    """Two left-padded prompts (pad id 0)."""
    ids = torch.tensor([[0, 0, 5, 9, 11], [7, 3, 8, 4, 6]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def greedy(strategy: Strategy, actor, max_new_tokens: int) -> torch.Tensor:
    batch = {k: v.to(strategy.device) for k, v in prompts().items()}
    with strategy.gathered_params(actor):
        rollout = strategy.unwrap_model(actor).generate(batch["input_ids"], batch["attention_mask"],
                                                        max_new_tokens=max_new_tokens, eos_token_id=2,
                                                        pad_token_id=0, do_sample=False)
    return rollout.sequences.cpu()


def synced_without_gathering(strategy: Strategy, actor) -> Dict[str, list]:
    """Greedy generation of this rank's prompt row with the parameters left sharded (every forward
    all-gathers), where rank 0 meets its EOS after two tokens and rank 1 never: ``synced`` keeps rank 0
    stepping until rank 1 is done. Returns the gathered reference and the synced result."""
    batch = {k: v[strategy.rank:strategy.rank + 1].to(strategy.device) for k, v in prompts().items()}
    module = strategy.unwrap_model(actor)
    with strategy.gathered_params(actor):
        reference = module.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=5, eos_token_id=-1,
                                    pad_token_id=0, do_sample=False)
    response = reference.sequences[0, -5:].tolist()
    eos = response[1] if strategy.rank == 0 else -1
    rollout = module.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=5, eos_token_id=eos,
                              pad_token_id=0, do_sample=False, synced=True)
    return {"reference": response, "eos": eos, "response": rollout.sequences[0, -rollout.action_mask.size(1):].tolist(),
            "action_mask": rollout.action_mask[0].tolist()}


def state_bytes(strategy: Strategy, actor, optim) -> Dict[str, int]:
    """Bytes this rank holds: ``params`` (its parameters or their shards), ``moments`` (the optimizer's
    per-parameter state) and ``master`` (a separate fp32 master copy, DeepSpeed's). Each storage counts once."""
    from torch.distributed.tensor import DTensor

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if isinstance(t, DTensor) else t

    seen = set()

    def nbytes(tensors: List[torch.Tensor]) -> int:
        total = 0
        for t in tensors:
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        return total

    module = strategy.unwrap_model(actor)
    zero = getattr(actor, "optimizer", None)  # a DeepSpeed engine's ZeRO optimizer
    masters = getattr(zero, "fp32_partitioned_groups_flat", None) or getattr(zero, "single_partition_of_fp32_groups",
                                                                             None) or []
    return {"params": nbytes([p.ds_tensor if hasattr(p, "ds_tensor") else local(p) for p in module.parameters()]),
            "master": nbytes(list(masters)),
            "moments": nbytes([local(v) for s in optim.state.values() for v in s.values() if torch.is_tensor(v)])}


def run(strategy: Strategy, scenarios: List[str], init_path: str, out: str) -> None:
    rank = strategy.rank
    results = {}
    if "fail" in scenarios:
        if rank == 1:
            raise RuntimeError("rank 1 failed on purpose")
        strategy.barrier()  # rank 0 would wait here forever if the failure did not stop the job
    if "data" in scenarios:
        loader = strategy.setup_dataloader(list(range(10)), batch_size=2, shuffle=True, collate_fn=torch.tensor)
        results["data"] = [batch.tolist() for batch in loader]
    if "step" in scenarios:
        actor, optim = prepared_actor(strategy, init_path)
        results["step_norm"] = train_step(strategy, actor, optim, step=0)
        strategy.save_model(actor, os.path.join(out, "step.pt"))
        results["only_rank0_error"] = None
        if strategy.shards_optimizer:
            try:
                strategy.save_optimizer(optim, os.path.join(out, "never.pt"), only_rank0=True)
            except ValueError as e:
                results["only_rank0_error"] = str(e)
        if "memory" in scenarios:
            results["bytes"] = state_bytes(strategy, actor, optim)
        if "generate" in scenarios:
            max_new_tokens = 3 + 2 * rank  # ranks differ: inside gathered_params no collective may run
            results["generate"] = {"max_new_tokens": max_new_tokens,
                                   "sequences": greedy(strategy, actor, max_new_tokens).tolist()}
            results["synced"] = synced_without_gathering(strategy, actor)
        del actor, optim
    if "accum" in scenarios:
        actor, optim = prepared_actor(strategy, init_path)
        results["accum_norm"] = train_step(strategy, actor, optim, step=0, micro_batches=2)
        strategy.save_model(actor, os.path.join(out, "accum.pt"))
        del actor, optim
    if "resume" in scenarios:
        only_rank0 = not strategy.shards_optimizer
        actor, optim = prepared_actor(strategy, init_path)
        train_step(strategy, actor, optim, step=0)
        strategy.save_model(actor, os.path.join(out, "resume_step1.pt"))
        strategy.save_optimizer(optim, os.path.join(out, "optim1.pt"), only_rank0=only_rank0)
        train_step(strategy, actor, optim, step=1)
        strategy.save_model(actor, os.path.join(out, "resume_uninterrupted.pt"))
        del actor, optim
        actor, optim = prepared_actor(strategy, os.path.join(out, "resume_step1.pt"))
        strategy.load_optimizer(optim, os.path.join(out, "optim1.pt"))
        strategy.save_optimizer(optim, os.path.join(out, "optim1_reloaded.pt"), only_rank0=only_rank0)
        train_step(strategy, actor, optim, step=1)
        strategy.save_model(actor, os.path.join(out, "resume_resumed.pt"))
    with open(os.path.join(out, f"results.rank{rank}.json"), "w") as f:
        json.dump(results, f)
    strategy.barrier()


@record  # a failing rank's traceback goes into torchrun's summary
def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--options", default="{}", help="JSON keyword arguments of the strategy")
    parser.add_argument("--scenarios", default="step", help=f"comma-separated, from {SCENARIOS}")
    parser.add_argument("--init", required=True, help="initial weights written by the test")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # 2 ranks share 2 cores
    strategy = build_strategy(args.strategy, **json.loads(args.options))
    run(strategy, args.scenarios.split(","), args.init, args.out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
