"""SFT, reward-model and PPO steps of one strategy in a low precision (see ``test_precision.py``).

Run in-process for ``naive`` and under ``torchrun --nproc_per_node 2`` for the distributed strategies:

    torchrun --nproc_per_node 2 tests/strategies/precision_worker.py --strategy fsdp --precision bf16 --out DIR

Every rank builds the same tiny LLaMA models from the same seed and data, and writes what the test checks
(``results.rank{r}.json``): the dtype forwards compute in, the dtypes of the PPO math, losses, and whether each
step changed the float32 weights.
"""

import argparse
import json
import os
import sys
from typing import Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)  # the repository, when run as a script
sys.path.insert(0, os.path.join(ROOT, "tests"))  # conftest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import tiny_config  # noqa: E402
from minichatgpt.functional import lm_loss, pairwise_loss  # noqa: E402
from minichatgpt.nn import Actor, Critic, RewardModel  # noqa: E402
from minichatgpt.trainer import PPOTrainer  # noqa: E402
from minichatgpt.trainer.strategies import Strategy, build_strategy  # noqa: E402

VOCAB, SEQ_LEN, ROWS = 77, 10, 4
OPTIONS = {"deepspeed_zero3": {"config": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}}}


def config() -> dict:
    return tiny_config("llama", VOCAB)


def batch(seed: int, strategy: Strategy) -> torch.Tensor:
    return torch.randint(3, VOCAB, (ROWS, SEQ_LEN), generator=torch.Generator().manual_seed(seed)).to(strategy.device)


def full_state(strategy: Strategy, model) -> Dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() for k, v in strategy.full_state_dict(model).items()}


def changed(before: Dict[str, torch.Tensor], after: Dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)


def build(strategy: Strategy, cls, **kwargs):
    with strategy.model_init_context():
        torch.manual_seed(0)
        return cls(config=config(), **kwargs)


def sft_step(strategy: Strategy) -> dict:
    actor = build(strategy, Actor)
    optim = torch.optim.AdamW(actor.parameters(), lr=1e-2)
    actor, optim = strategy.prepare((actor, optim))
    before, ids = full_state(strategy, actor), batch(1, strategy)
    logits = actor(ids, torch.ones_like(ids))  # (B, T, V)
    loss = lm_loss(logits, ids)
    strategy.backward(loss, actor, optim)
    strategy.clip_grad_norm(actor, optim, 1.0)
    strategy.optimizer_step(optim, actor)
    after = full_state(strategy, actor)
    return {"logits_dtype": str(logits.dtype), "loss": float(loss.detach()), "changed": changed(before, after),
            "saved_dtypes": sorted({str(v.dtype) for v in strategy.full_state_dict(actor).values()})}


def rm_step(strategy: Strategy) -> dict:
    model = build(strategy, RewardModel)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optim = strategy.prepare((model, optim))
    chosen, rejected = batch(2, strategy), batch(3, strategy)
    scores = model(torch.cat([chosen, rejected]), torch.ones(2 * ROWS, SEQ_LEN, device=strategy.device))  # (2B,)
    loss = pairwise_loss(scores[:ROWS], scores[ROWS:])
    before = full_state(strategy, model)
    strategy.backward(loss, model, optim)
    strategy.optimizer_step(optim, model)
    return {"scores_dtype": str(scores.dtype), "loss": float(loss.detach()), "changed": changed(before, full_state(strategy, model))}


def ppo_step(strategy: Strategy) -> dict:
    actor, reference = build(strategy, Actor), build(strategy, Actor).requires_grad_(False)
    critic, reward_model = build(strategy, Critic), build(strategy, RewardModel).requires_grad_(False)
    actor_optim = torch.optim.Adam(actor.parameters(), lr=1e-3)
    critic_optim = torch.optim.Adam(critic.parameters(), lr=1e-3)
    (actor, actor_optim), (critic, critic_optim), reward_model, reference = strategy.prepare(
        (actor, actor_optim), (critic, critic_optim), reward_model, reference)
    trainer = PPOTrainer(strategy, actor, critic, reward_model, reference, actor_optim, critic_optim,
                         train_batch_size=ROWS, max_new_tokens=4, eos_token_id=2, pad_token_id=0)
    prompts = batch(4, strategy)[:, :5]
    before = full_state(strategy, actor)
    experience = trainer.make_experience({"input_ids": prompts, "attention_mask": torch.ones_like(prompts)})
    trainer.buffer.append(experience)
    stats = trainer.learn()
    math = {name: str(getattr(experience, name).dtype) for name in ("log_probs", "values", "returns", "advantages",
                                                                    "scores", "kl")}
    return {"math_dtypes": math, "stats": stats, "changed": changed(before, full_state(strategy, actor))}


def run(strategy: Strategy, out: str) -> Dict[str, dict]:
    torch.manual_seed(0)
    results = {"precision": strategy.precision, "sft": sft_step(strategy), "rm": rm_step(strategy),
               "ppo": ppo_step(strategy)}
    with open(os.path.join(out, f"results.rank{strategy.rank}.json"), "w") as f:
        json.dump(results, f)
    return results


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # 2 ranks share 2 cores
    strategy = build_strategy(args.strategy, precision=args.precision, **OPTIONS.get(args.strategy, {}))
    run(strategy, args.out)
    strategy.barrier()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
