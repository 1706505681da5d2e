"""``minichatgpt eval``: measure saved models. Writes OUTPUT_DIR/results.json, report.md and report.png.

What runs depends on the flags given (any combination):

  reward-model accuracy   --reward_model [NAME=]DIR ... --pairs FILE ...
      on every preference format the RM reader takes; per --subset_column value (RewardBench's
      "subset") when present; accuracy with a 95% Wilson interval, and the mean margin.
  policy vs baseline      --policy [NAME=]DIR ... --baseline DIR --prompts FILE (--judge_rm DIR | --judge_lm DIR)
      both answer every prompt with the same sampling flags and --seed; a gold reward model or an LLM
      judge (asked in both orders, comparing log p("A") with log p("B")) picks. Win/tie/loss rates with
      95% Wilson intervals, a length-controlled win rate (logistic regression on the length difference,
      read at zero difference), mean lengths, and the policy's KL to the baseline (summed k1 per
      response on the policy's own samples). Every prompt's answers go to win_rate_samples.jsonl.
  perplexity              --text FILE [--perplexity_model [NAME=]DIR ...]  ({"text"} JSON lines or .txt)
  data split              --split FILE --split_parts proxy=300,gold=600,heldout=200
      disjoint parts by prompt, written to OUTPUT_DIR/NAME.jsonl before anything else runs.

A model DIR is any save_pretrained directory (what sft, rm and ppo write) or a .gguf file; each is read
with its own tokenizer. Runs in one process, on the GPU when there is one (--device), in float32 or, with
--precision bf16|fp16, every model cast to that dtype (scores, log-probs and KL still summed in float32).
"""

import json
import os
from typing import Dict, List, Optional, Tuple

import torch

from ..data import PromptDataset
from ..data.readers import looks_like_path
from ..evaluation import (Contestant, LLMJudge, RewardModelJudge, SamplingSettings, compare_policies, parse_parts, perplexity,
                          reward_model_accuracy, sample_baseline, split_file, write_report)
from ..nn import Actor, RewardModel, load_tokenizer
from ..nn.loading import read_checkpoint_tensor
from ..trainer.strategies.precision import as_dtype
from ..trainer.strategies.utils import set_seed
from ..config import ConfigParser, UsageError, dump_yaml, validate
from ..log import get_logger, setup_logging
from .configs import EvalConfig
from .model_flags import merged_adapter_dirs
from .path_checks import check_model_source, check_output_dir

logger = get_logger(__name__)


def build_parser() -> ConfigParser:
    """The flags of ``minichatgpt eval`` (the fields of :class:`EvalConfig`); ``parse_args`` returns one."""
    return ConfigParser(EvalConfig, prog="minichatgpt eval", description=__doc__)


def named(value: str) -> Tuple[str, str]:
    """``NAME=DIR`` -> (NAME, DIR); a plain DIR is named after its last path component."""
    name, sep, path = value.partition("=")
    if sep and name and "/" not in name:
        return name, path
    return os.path.basename(os.path.normpath(value)) or value, value


def check_args(args: EvalConfig) -> None:
    """Everything that can be wrong with the config, before any model loads; raises UsageError."""
    validate(args)
    if args.split_parts:
        try:
            parse_parts(args.split_parts)
        except ValueError as err:
            raise UsageError(f"--split_parts {args.split_parts!r}: {err}") from err
    if args.text and not (args.perplexity_model or args.policy):
        raise UsageError("--text needs --perplexity_model (or --policy / --baseline, measured by default)")
    check_locations(args)
    check_output_dir("--output_dir", args.output_dir)


def check_locations(args: EvalConfig) -> None:
    """Data files exist (a name that does not look like a path may be a hub dataset) and models load."""
    data = [("--pairs", p) for p in args.pairs] + [("--prompts", args.prompts), ("--text", args.text),
                                                     ("--split", args.split)]
    for flag, path in data:
        if path is not None and not os.path.isfile(os.path.expanduser(path)) and \
                (looks_like_path(path) or os.path.isdir(path)):
            raise UsageError(f"{flag} {path!r}: no such file")
    for flag, value in model_flags(args):
        check_model_source(flag, named(value)[1])
    for flag, values in (("--reward_model", args.reward_model), ("--judge_rm", [args.judge_rm] if args.judge_rm else [])):
        for value in values:
            check_reward_head(flag, named(value)[1])


def check_reward_head(flag: str, path: str) -> None:
    """A reward model directory holds its one-output ``score`` head (as ``minichatgpt rm`` saves it);
    without one ``RewardModel`` would score with a random head, so a causal LM given by mistake is an error."""
    head = read_checkpoint_tensor(path, "score.weight") if os.path.isdir(os.path.expanduser(path)) else None
    if head is None or head.dim() != 2 or head.size(0) != 1:
        found = "no" if head is None else f"a {tuple(head.shape)}"
        raise UsageError(f"{flag} {path!r} has {found} reward head (expected score.weight of shape (1, hidden), "
                         "as minichatgpt rm saves it); is it a causal LM rather than a reward model?")


def model_flags(args: EvalConfig) -> List[Tuple[str, str]]:
    """(flag, [NAME=]DIR) of every model the flags name."""
    models = [("--reward_model", v) for v in args.reward_model] + [("--policy", v) for v in args.policy] + \
        [("--perplexity_model", v) for v in args.perplexity_model] + \
        [(f"--{flag}", getattr(args, flag)) for flag in ("baseline", "judge_rm", "judge_lm")]
    return [(flag, value) for flag, value in models if value is not None]


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def place(model: torch.nn.Module, args: EvalConfig, device: str) -> torch.nn.Module:
    """``model`` on ``device`` in the ``--precision`` dtype, in eval mode (every model eval loads goes through here).
    A reward model's one-output head stays in float32, so its scores are not rounded to bf16/fp16 steps (which
    would turn near-equal gold scores into ties)."""
    model = model.to(device=device, dtype=as_dtype(args.precision)).eval()
    if isinstance(model, RewardModel):
        model.value_head.float()
    return model


def load_actor(value: str, args: EvalConfig, device: str):
    name, path = named(value)
    return name, place(Actor(pretrained=path), args, device), load_tokenizer(path)


def evaluate_reward_models(args: EvalConfig, device: str) -> List[Dict]:
    rows = []
    for value in args.reward_model:
        name, path = named(value)
        model, tokenizer = place(RewardModel(pretrained=path), args, device), load_tokenizer(path)
        for pairs in args.pairs:
            subsets = reward_model_accuracy(model, tokenizer, pairs, args.subset_column, max_len=args.max_len,
                                            batch_size=args.batch_size, max_pairs=args.max_pairs,
                                            skip_invalid=args.skip_invalid_rows, device=device)
            rows.append({"model": name, "path": path, "pairs": os.path.basename(pairs), "subsets": subsets})
        del model
    return rows


def build_judge(args: EvalConfig, device: str):
    """The judge and how the tables name it."""
    if args.judge_rm:
        name, path = named(args.judge_rm)
        model = place(RewardModel(pretrained=path), args, device)
        judge = RewardModelJudge(model, load_tokenizer(path), args.max_len, args.batch_size, device)
        return judge, f"RM {name}"
    name, path = named(args.judge_lm)
    # The judge's prompt holds the conversation and two answers: it may be twice as long as one sequence.
    judge = LLMJudge(place(Actor(pretrained=path), args, device), load_tokenizer(path), 2 * args.max_len,
                     args.batch_size, device)
    return judge, f"LLM {name}"


def contestant(value: str, args: EvalConfig, device: str) -> Tuple[str, Contestant]:
    name, actor, tokenizer = load_actor(value, args, device)
    prompts = PromptDataset(args.prompts, tokenizer, max_len=args.max_input_len, max_datasets_size=args.max_prompts,
                            skip_invalid=args.skip_invalid_rows)
    return name, Contestant(actor, tokenizer, prompts)


def evaluate_policies(args: EvalConfig, device: str) -> List[Dict]:
    """Each ``--policy`` against ``--baseline``; every prompt's answers go to win_rate_samples.jsonl."""
    settings = SamplingSettings(args.max_new_tokens, args.temperature, args.top_k, args.top_p, not args.greedy,
                                args.seed, args.batch_size)
    judge, judge_name = build_judge(args, device)
    baseline_name, baseline = contestant(args.baseline, args, device)
    baseline_samples = sample_baseline(baseline, settings, device)  # the same for every policy: drawn once
    rows = []
    with open(os.path.join(args.output_dir, "win_rate_samples.jsonl"), "w", encoding="utf-8") as f:
        for value in args.policy:
            name, policy = contestant(value, args, device)
            result = compare_policies(policy, baseline, judge, settings, args.tie_threshold, device,
                                      baseline_samples)
            for record in result.pop("records"):
                f.write(json.dumps({"policy_model": name, "baseline_model": baseline_name, **record},
                                   ensure_ascii=False) + "\n")
            rows.append({"policy": name, "baseline": baseline_name, "judge_name": judge_name, **result})
    return rows


def evaluate_perplexity(args: EvalConfig, device: str) -> List[Dict]:
    values = args.perplexity_model or list(args.policy) + ([args.baseline] if args.baseline else [])
    rows = []
    for value in values:
        name, actor, tokenizer = load_actor(value, args, device)
        measured = perplexity(actor, tokenizer, args.text, max_len=args.max_len, batch_size=args.batch_size,
                              max_documents=args.max_documents, skip_invalid=args.skip_invalid_rows, device=device)
        rows.append({"model": name, "text": os.path.basename(args.text), **measured})
    return rows


def run(args: EvalConfig) -> Dict:
    """Check the flags, run the evaluations they ask for, write the report; returns the results."""
    setup_logging(args.log_level)
    check_args(args)
    device = resolve_device(args.device)
    merged = merged_adapter_dirs(named(value)[1] for _, value in model_flags(args)) if args.precision != "fp32" else []
    if merged:
        logger.warning(f"--precision {args.precision}: {', '.join(merged)} hold LoRA adapters merged into their "
                       "weights; casting rounds much of those small deltas away (a LoRA reward model's held-out "
                       "margin halved in bf16, README), so their scores differ from float32: use fp32 to measure "
                       "fine-tunes, bf16 for speed on full fine-tunes")
    set_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    dump_yaml(args, os.path.join(args.output_dir, "config.yaml"), "eval")  # reruns this evaluation alone
    results: Dict = {}
    if args.split:
        results["split"] = split_file(args.split, args.split_parts, args.output_dir, args.seed)
    if args.reward_model:
        results["reward_models"] = evaluate_reward_models(args, device)
    if args.policy:
        results["win_rates"] = evaluate_policies(args, device)
    if args.text:
        results["perplexity"] = evaluate_perplexity(args, device)
    paths = write_report(results, args.output_dir)
    with open(paths["markdown"]) as f:
        logger.info(f.read())
    logger.info("written: " + ", ".join(paths.values()))
    return results


def main(argv: Optional[List[str]] = None) -> Dict:
    return run(build_parser().parse_args(argv))
