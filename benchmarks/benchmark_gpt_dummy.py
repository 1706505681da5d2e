"""PPO (stage 3) throughput on randomly initialized GPT-2-architecture models of a chosen size.

The interface of the original ColossalChat ``benchmark_gpt_dummy.py``; nothing is downloaded and no
tokenizer is needed::

    python benchmarks/benchmark_gpt_dummy.py --model tiny --strategy naive --num_episodes 1
    torchrun --nproc_per_node 2 benchmarks/benchmark_gpt_dummy.py --model xs --strategy ddp
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 benchmarks/benchmark_gpt_dummy.py --model xs \\
        --strategy deepspeed_zero3 --no_gather      # rollouts with per-layer all-gathers (no full gather)
    torchrun --nproc_per_node 8 benchmarks/benchmark_gpt_dummy.py --model 6b --critic_model m \\
        --strategy deepspeed_zero3 --experience_batch_size 16 --train_batch_size 8   # GPUs

What runs: the actor, reference, critic and reward model are built from ``GPT2Config`` presets
(``--model`` for actor and reference, ``--critic_model`` for critic and reward model; sizes in
``benchmarks/README.md``) inside ``strategy.model_init_context()``, prepared with ``strategy.prepare``
as ``minichatgpt.recipes.ppo`` does, and trained by ``PPOTrainer`` on prompts of ``--max_input_len``
uniformly random token ids. With ``--lora_rank > 0`` the reference is the actor with its adapters off and
the reward model shares the critic's frozen backbone, as in the recipe. Rollouts sample (temperature 1,
top-k 50, as the original) exactly ``--max_new_tokens`` tokens: the EOS id is ``vocab_size``, an id
outside the vocabulary that is never sampled, so every response has full length (pad id 0).

Measured per phase by the trainer's ``PerformanceEvaluator`` callback on every rank, then combined:
time is the slowest rank's, samples, tokens and FLOPs are summed over ranks:

* generation: rollouts; tokens = generated tokens; FLOPs = ``2 * N_actor * (prompt + response tokens)``;
* experience: forward passes of reference, critic and reward model over the rollouts (the actor's
  log-probs come from generation); FLOPs = ``2 * (N_ref + N_critic + N_rm) * tokens``;
* training: PPO updates of actor and critic; FLOPs = ``6 * (N_actor + N_critic) * tokens``;
* overall: all phases' time and FLOPs, generation's samples and tokens (rollouts per second end to end).

FLOP formula (Kaplan et al. 2020, arXiv:2001.08361): ``2 * N * tokens`` for a forward pass of an
N-parameter model and ``6 * N * tokens`` for forward plus backward; attention's sequence term is left
out. Generation with a KV cache does the forward work of each token once, so ``2 * N`` per token holds.

Also reported: peak memory of every rank (CUDA max allocated, or the process's peak RSS on the CPU), a
square-matmul TFLOPS measured on the same device and threads (before and after the run, averaged), and
the training phase's TFLOPS per rank as a fraction of it. Rank 0 prints the table and appends one JSON
line (arguments, world size, versions, device, parameter counts, results) to ``--results``.
"""

import argparse
import os
import sys
from typing import List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (HERE, MatmulReference, TensorDataset, add_common_arguments, aggregate,  # noqa: E402
                    append_result, format_table, gather, gpt_config, matmul_description, random_ids, record, report,
                    setup)

from minichatgpt.nn import Actor, Critic, RewardModel  # noqa: E402
from minichatgpt.trainer import PerformanceEvaluator, PPOTrainer  # noqa: E402
from minichatgpt.trainer.utils import count_parameters  # noqa: E402

PAD_TOKEN_ID = 0
TOP_K = 50


class QuietPerformanceEvaluator(PerformanceEvaluator):
    """The trainer's evaluator without its rank-0 table: this script prints the all-rank one instead."""

    def on_fit_end(self, trainer) -> None:
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--critic_model", default=None, help="preset of critic and reward model (default: --model)")
    parser.add_argument("--num_episodes", type=int, default=3)
    parser.add_argument("--max_timesteps", type=int, default=8, help="prompt batches per episode")
    parser.add_argument("--update_timesteps", type=int, default=8, help="prompt batches between PPO updates")
    parser.add_argument("--max_epochs", type=int, default=3, help="passes over the replay buffer per update")
    parser.add_argument("--train_batch_size", type=int, default=8, help="rows per PPO minibatch (per rank)")
    parser.add_argument("--experience_batch_size", type=int, default=8, help="prompts per rollout (per rank)")
    parser.add_argument("--max_input_len", type=int, default=400, help="prompt tokens")
    parser.add_argument("--max_new_tokens", type=int, default=112, help="generated tokens per prompt")
    parser.add_argument("--no_gather", action="store_true",
                        help="FSDP/ZeRO-3: generate with sharded weights (gather_for_generation=False)")
    parser.set_defaults(results=os.path.join(HERE, "results", "gpt_dummy.jsonl"))
    return parser


def build_models(args: argparse.Namespace, vocab_size: int):
    """Actor, critic, reward model and reference (None when LoRA shares it with the actor), random init."""
    actor_config = gpt_config(args.model, vocab_size)
    critic_config = gpt_config(args.critic_model, actor_config.vocab_size)
    for name, config in (("--model", actor_config), ("--critic_model", critic_config)):
        if args.max_input_len + args.max_new_tokens > config.n_positions:
            raise SystemExit(f"--max_input_len + --max_new_tokens exceeds {name}'s {config.n_positions} positions")
    share = args.lora_rank > 0
    # Re-seeding before each model makes the reference a copy of the initial actor and the reward model
    # one of the critic (the KL starts at 0, as in a real run), without copy.deepcopy, which ZeRO-3 forbids.
    torch.manual_seed(args.seed)
    actor = Actor(config=actor_config, lora_rank=args.lora_rank)
    torch.manual_seed(args.seed)
    reference = None if share else Actor(config=actor_config)
    torch.manual_seed(args.seed + 1)
    critic = Critic(config=critic_config, lora_rank=args.lora_rank)
    torch.manual_seed(args.seed + 1)
    reward_model = RewardModel.sharing_backbone(critic) if share else RewardModel(config=critic_config)
    if reference is not None:
        reference.requires_grad_(False)
    if not share:
        # A shared reward model's head is frozen already; freezing the whole module would also freeze the
        # critic's LoRA adapters, which live in the shared backbone.
        reward_model.requires_grad_(False)
    return actor, critic, reward_model, reference


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    args.critic_model = args.critic_model or args.model
    strategy = setup(args)
    vocab_size = gpt_config(args.model, args.vocab_size).vocab_size
    with strategy.model_init_context():
        actor, critic, reward_model, reference = build_models(args, vocab_size)

    actor_optim = torch.optim.Adam([p for p in actor.parameters() if p.requires_grad], lr=5e-6)
    critic_optim = torch.optim.Adam([p for p in critic.parameters() if p.requires_grad], lr=5e-6)
    (actor, actor_optim), (critic, critic_optim), reward_model, reference = strategy.prepare(
        (actor, actor_optim), (critic, critic_optim), reward_model, reference)

    num_prompts = args.num_episodes * args.max_timesteps * args.experience_batch_size * strategy.world_size
    ids = random_ids(num_prompts, args.max_input_len, vocab_size, args.seed)
    prompts = TensorDataset({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    prompt_loader = strategy.setup_dataloader(prompts, args.experience_batch_size, shuffle=True, seed=args.seed)

    performance = QuietPerformanceEvaluator()
    trainer = PPOTrainer(strategy, actor, critic, reward_model, reference, actor_optim, critic_optim,
                         ptx_coef=0.0, train_batch_size=args.train_batch_size,
                         experience_batch_size=args.experience_batch_size, max_epochs=args.max_epochs,
                         callbacks=[performance], gather_for_generation=not args.no_gather,
                         max_new_tokens=args.max_new_tokens, do_sample=True, top_k=TOP_K,
                         eos_token_id=vocab_size, pad_token_id=PAD_TOKEN_ID)
    params = dict(trainer.num_params,
                  actor_trainable=count_parameters(strategy.unwrap_model(actor), trainable_only=True),
                  critic_trainable=count_parameters(strategy.unwrap_model(critic), trainable_only=True))
    matmul = MatmulReference(strategy, args.matmul_size)
    matmul.measure()
    metrics = trainer.fit(prompt_loader, num_episodes=args.num_episodes, max_timesteps=args.max_timesteps,
                          update_timesteps=args.update_timesteps)
    matmul.measure()

    results = report(strategy, aggregate(gather(dict(performance.totals)), with_overall=True), matmul)
    result = record("gpt_dummy", args, strategy, params, results, metrics=metrics,
                    generation={"do_sample": True, "top_k": TOP_K, "eos_token_id": vocab_size,
                                "pad_token_id": PAD_TOKEN_ID, "gather_for_generation": not args.no_gather})
    if strategy.is_rank0():
        print(f"\nppo: actor {args.model} ({params['actor'] / 1e6:.1f}M), critic {args.critic_model} "
              f"({params['critic'] / 1e6:.1f}M), strategy {args.strategy} x {strategy.world_size}, "
              f"{args.experience_batch_size} prompts/rank x {args.max_input_len} + {args.max_new_tokens} tokens, "
              f"{args.num_episodes} episode(s) x {args.max_timesteps} timesteps"
              f"{', no gather for generation' if args.no_gather else ''}")
        print(format_table(results, matmul_description(strategy, args)))
        append_result(args.results, result)
        print(f"result appended to {args.results}")
    return result


if __name__ == "__main__":
    main()
