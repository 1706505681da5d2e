"""Stage 3 (PPO) side by side: minichatgpt ``PPOTrainer`` against TRL's ``PPOTrainer``.

    OMP_NUM_THREADS=1 python benchmarks/compare_ppo.py                     # a few minutes on 1 thread
    OMP_NUM_THREADS=1 python benchmarks/compare_ppo.py --peer_python .venv-trl-ppo/bin/python --steps 2

TRL's ``PPOTrainer`` lived in ``trl.trainer`` up to trl 0.28, in ``trl.experimental.ppo`` from 0.26 and was
removed in trl 1.13.0; trl 1.12.0 is the last release that ships it. As one environment holds one trl,
the TRL side runs in a worker process of another Python (``--peer_python``), by default
``.venv-trl-ppo/bin/python`` when it exists, or this Python when its trl still has ``trl.experimental.ppo``.
Set that environment up once (CPU torch first, so that pip never pulls a CUDA build)::

    python -m venv .venv-trl-ppo
    .venv-trl-ppo/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu  # or a local wheel
    .venv-trl-ppo/bin/pip install trl==1.12.0 transformers==5.24.0

The worker starts once, loads nothing of minichatgpt, and waits on its stdin while minichatgpt runs, so
the sides still alternate (A B A B ...) without competing for the CPU; only ``trainer.train()`` is timed
inside it. Without a usable peer the script runs the minichatgpt side alone and says why.

Both sides run ``--steps`` PPO updates from the same weights: an actor and a reference policy (the causal
LM directory), a critic/value model and a reward model (the sequence-classification directory with the
same backbone). Each update samples ``--batch_size`` prompts of exactly ``--seq_len`` tokens (hh-rlhf
prompts or the demo prompts; no padding), generates ``--max_new_tokens`` tokens (temperature 1, no
top-k/top-p, KV cache, stop at EOS), scores them with the reference, critic and reward models, computes
GAE (gamma 1, lambda 0.95) with a k1 KL penalty (coefficient 0.05), then runs ``--ppo_epochs`` passes of one
minibatch of the whole batch (clip 0.2, value clip 0.2). AdamW (torch, weight decay 0, constant lr),
float32, no gradient checkpointing, no evaluation, sample generations or saving. Tokens/s counts the
rollout tokens, ``steps * batch_size * (seq_len + max_new_tokens)``.

What still differs, by design of each library:

* TRL generates with ``model.generate(output_scores=True)``, keeping a (B, V) score tensor per step, and
  takes log-probs from them; minichatgpt gathers each sampled token's log-prob during its own loop.
* TRL's reference, policy and value forwards compute logits or values at every position of prompt plus
  response (and ask for all hidden states); minichatgpt computes only the A + 1 positions it needs.
* TRL optimizes policy and value model with one AdamW on ``pg_loss + vf_coef * vf_loss`` (one backward);
  minichatgpt has two optimizers and two backward passes. The parameters updated are the same.
* TRL does not clip gradients; minichatgpt's clipping is turned off here (``max_grad_norm=0``) to match.
* TRL also computes the entropy of the full logits at every training step (no gradient).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_common import (REPO, Side, Stopwatch, Timing, add_common_arguments, alternate,  # noqa: E402
                            build_tokenizer, model_description, prompt_examples, ratios, report, resolve_data,
                            save_models, set_threads)

OURS = "minichatgpt PPOTrainer"
DEFAULT_PEER_PYTHON = os.path.join(REPO, ".venv-trl-ppo", "bin", "python")
KL_COEF, CLIP_EPS, VALUE_CLIP, GAMMA, LAM = 0.05, 0.2, 0.2, 1.0, 0.95
LOG_INTERVAL = 10


def rollout_tokens(settings: dict) -> int:
    return settings["steps"] * settings["batch_size"] * (settings["seq_len"] + settings["max_new_tokens"])


# ----------------------------------------------------------------------------------------------
# minichatgpt side (this process)
# ----------------------------------------------------------------------------------------------
def minichatgpt_side(settings: dict, prompts: torch.Tensor, tokenizer) -> Side:
    from minichatgpt.data import PromptCollator
    from minichatgpt.nn import Actor, Critic, RewardModel
    from minichatgpt.trainer import PPOTrainer
    from minichatgpt.trainer.strategies import NaiveStrategy

    items = [{"input_ids": row} for row in prompts]
    s = settings

    def run():
        strategy = NaiveStrategy(s["device"])
        actor, reference = Actor(pretrained=s["lm_dir"]), Actor(pretrained=s["lm_dir"])
        critic, reward_model = Critic(pretrained=s["classifier_dir"]), RewardModel(pretrained=s["classifier_dir"])
        for frozen in (reference, reward_model):
            frozen.requires_grad_(False)
        actor_optim = torch.optim.AdamW(actor.parameters(), lr=s["lr"], weight_decay=0.0)
        critic_optim = torch.optim.AdamW(critic.parameters(), lr=s["lr"], weight_decay=0.0)
        (actor, actor_optim), (critic, critic_optim), reward_model, reference = strategy.prepare(
            (actor, actor_optim), (critic, critic_optim), reward_model, reference)
        loader = strategy.setup_dataloader(items, s["batch_size"], shuffle=True,
                                           collate_fn=PromptCollator(tokenizer.pad_token_id), seed=s["seed"])
        trainer = PPOTrainer(strategy, actor, critic, reward_model, reference, actor_optim, critic_optim,
                             kl_coef=KL_COEF, ptx_coef=0.0, train_batch_size=s["batch_size"],
                             experience_batch_size=s["batch_size"], max_epochs=s["ppo_epochs"], tokenizer=tokenizer,
                             eps_clip=CLIP_EPS, value_clip=VALUE_CLIP, gamma=GAMMA, lam=LAM, max_grad_norm=0.0,
                             dataloader_pin_memory=False, max_new_tokens=s["max_new_tokens"], do_sample=True,
                             temperature=1.0, top_k=0, top_p=1.0)
        with Stopwatch(s["device"]) as watch:
            trainer.fit(loader, None, num_episodes=1, max_timesteps=s["steps"], update_timesteps=1)
        return watch.timing(rollout_tokens(s))

    return Side(OURS, run)


# ----------------------------------------------------------------------------------------------
# TRL side (a worker process, possibly of another virtual environment)
# ----------------------------------------------------------------------------------------------
def trl_ppo_run(settings: dict, prompts: torch.Tensor, output_dir: str):
    """One timed TRL PPO run (inside the worker)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    s = settings
    tokenizer = AutoTokenizer.from_pretrained(s["lm_dir"])
    tokenizer.padding_side = "left"
    dataset = Dataset.from_dict({"input_ids": prompts.tolist()})
    config = PPOConfig(output_dir=output_dir, per_device_train_batch_size=s["batch_size"],
                       gradient_accumulation_steps=1, num_mini_batches=1,
                       local_rollout_forward_batch_size=s["batch_size"], total_episodes=s["steps"] * s["batch_size"],
                       num_ppo_epochs=s["ppo_epochs"], response_length=s["max_new_tokens"], temperature=1.0,
                       stop_token="eos", kl_coef=KL_COEF, kl_estimator="k1", cliprange=CLIP_EPS,
                       cliprange_value=VALUE_CLIP, gamma=GAMMA, lam=LAM, learning_rate=s["lr"],
                       lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, optim="adamw_torch",
                       bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=s["device"] == "cpu",
                       report_to="none", save_strategy="no", eval_strategy="no", num_sample_generations=0,
                       logging_steps=LOG_INTERVAL, disable_tqdm=True, dataloader_num_workers=0, seed=s["seed"])
    policy = AutoModelForCausalLM.from_pretrained(s["lm_dir"], dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(s["lm_dir"], dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(s["classifier_dir"], num_labels=1,
                                                                     dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(s["classifier_dir"], num_labels=1,
                                                                      dtype=torch.float32)
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=reference,
                         reward_model=reward_model, train_dataset=dataset, value_model=value_model,
                         eval_dataset=dataset)
    with Stopwatch(s["device"]) as watch:
        trainer.train()
    return watch.timing(rollout_tokens(s))


def worker(workdir: str) -> None:
    """Line protocol on stdin/stdout: print ``@@READY {versions}`` (or ``@@ERROR why``), then answer each
    ``run`` line with ``@@RESULT {"seconds", "cpu_seconds", "tokens"}`` (the worker's own CPU time); stop at
    ``exit`` or at the end of the input."""
    with open(os.path.join(workdir, "settings.json")) as f:
        settings = json.load(f)
    set_threads(settings["threads"])
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        import transformers
        import trl
        from trl.experimental.ppo import PPOTrainer  # noqa: F401
    except ImportError as err:
        print(f"@@ERROR {sys.executable} cannot import trl.experimental.ppo ({err}); it needs trl >= 0.26, <= 1.12",
              flush=True)
        return
    transformers.utils.logging.set_verbosity_error()
    prompts = torch.load(os.path.join(workdir, "prompts.pt"))
    versions = {"python": sys.executable, "torch": torch.__version__, "transformers": transformers.__version__,
                "trl": trl.__version__}
    print("@@READY " + json.dumps(versions), flush=True)
    for n, line in enumerate(sys.stdin):
        if line.strip() != "run":
            break
        timing = trl_ppo_run(settings, prompts, os.path.join(workdir, f"trl_{n}"))
        print("@@RESULT " + json.dumps(timing._asdict()), flush=True)


class PeerWorker:
    """The parent's handle on the worker process."""

    def __init__(self, python: str, workdir: str):
        self.process = subprocess.Popen([python, os.path.abspath(__file__), "--worker", workdir],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.versions: Optional[dict] = None
        self.error: Optional[str] = None
        tag, payload = self._read()
        if tag == "@@READY":
            self.versions = json.loads(payload)
        else:
            self.error = payload or f"the worker exited with code {self.process.wait()}"
            self.close()

    def _read(self):
        """The next ``@@`` line (other output is passed on to stderr); (None, "") at end of output."""
        for line in self.process.stdout:
            if line.startswith("@@"):
                tag, _, payload = line.rstrip("\n").partition(" ")
                return tag, payload
            print(f"  [trl worker] {line.rstrip()}", file=sys.stderr)
        return None, ""

    def run(self):
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        tag, payload = self._read()
        if tag != "@@RESULT":
            raise RuntimeError(f"the TRL worker failed (exit code {self.process.wait()}); see its output above")
        return Timing(**json.loads(payload))

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("exit\n")
                self.process.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            self.process.wait(timeout=60)


def has_trl_ppo_here() -> bool:
    import importlib.util

    spec = importlib.util.find_spec("trl")
    return spec is not None and os.path.isdir(os.path.join(os.path.dirname(spec.origin), "experimental", "ppo"))


def peer_python(requested: Optional[str]) -> Optional[str]:
    if requested:
        return requested if os.path.isfile(requested) else shutil.which(requested) or requested
    if has_trl_ppo_here():
        return sys.executable
    return DEFAULT_PEER_PYTHON if os.path.exists(DEFAULT_PEER_PYTHON) else None


# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, steps=3, batch_size=8, seq_len=64, lr=1e-5)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--ppo_epochs", type=int, default=1, help="passes over each batch of experience")
    parser.add_argument("--peer_python", default=None,
                        help="Python of an environment with trl <= 1.12.0 (default: .venv-trl-ppo/bin/python if "
                             "present, or this one when its trl has trl.experimental.ppo)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[List[str]] = None) -> Optional[dict]:
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker(args.worker)
    set_threads(args.threads)
    args.data = data = resolve_data(args.data)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = build_tokenizer(data)
    prompts = prompt_examples(tokenizer, data, args.seq_len, args.steps * args.batch_size)
    sides, skipped, peer = [], {}, None
    with tempfile.TemporaryDirectory(prefix="compare_ppo_") as tmp:
        dirs = save_models(tokenizer, tmp, args.n_layer, args.n_embd, args.n_head,
                           max(1024, args.seq_len + args.max_new_tokens), args.seed)
        settings = {"lm_dir": dirs.lm, "classifier_dir": dirs.classifier, "steps": args.steps,
                    "batch_size": args.batch_size, "seq_len": args.seq_len, "max_new_tokens": args.max_new_tokens,
                    "ppo_epochs": args.ppo_epochs, "lr": args.lr, "seed": args.seed, "device": args.device,
                    "threads": args.threads}
        sides.append(minichatgpt_side(settings, prompts, tokenizer))
        python = peer_python(args.peer_python)
        if args.no_peer:
            skipped["trl PPOTrainer"] = "--no_peer"
        elif python is None:
            skipped["trl PPOTrainer"] = (
                "no Python with TRL's PPOTrainer: it was removed in trl 1.13.0; create .venv-trl-ppo with "
                "trl==1.12.0 (see this script's docstring) or pass --peer_python")
        elif not os.path.isfile(python):
            skipped["trl PPOTrainer"] = f"--peer_python {python} does not exist"
        else:
            with open(os.path.join(tmp, "settings.json"), "w") as f:
                json.dump(settings, f)
            torch.save(prompts, os.path.join(tmp, "prompts.pt"))
            peer = PeerWorker(python, tmp)
            if peer.error:
                skipped["trl PPOTrainer"] = peer.error
            else:
                sides.append(Side(f"trl PPOTrainer {peer.versions['trl']}", peer.run))
        try:
            results = alternate(sides, args.repeats, args.warmup)
        finally:
            if peer is not None:
                peer.close()
    header = (f"{model_description(args, dirs, len(tokenizer))} (actor, reference, critic, reward model); {data} "
              f"prompts; {args.steps} updates of {args.batch_size} prompts x {args.seq_len} tokens + "
              f"{args.max_new_tokens} sampled, {args.ppo_epochs} PPO epoch(s) of one minibatch; median of "
              f"{args.repeats} alternating runs (+{args.warmup} warm-up); {args.device}, "
              f"{torch.get_num_threads()} thread(s)")
    extra = {"peer_versions": peer.versions} if peer is not None and peer.versions else {}
    return report("compare_ppo", args, header, results, ratios(results, [(OURS, s.name) for s in sides[1:]]),
                  skipped, **extra)


if __name__ == "__main__":
    main()
