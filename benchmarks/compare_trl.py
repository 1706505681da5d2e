"""The side-by-side comparisons against TRL's trainers (``compare_sft``, ``compare_rm``, ``compare_dpo``,
``compare_grpo``): each script declares a ``TRLComparison`` (its data, the model both sides load, the two
contenders and its defaults) and ``compare_with_trl`` runs it under ``compare_common``'s fairness rules.

minichatgpt's contender is built with ``naive_side`` (``NaiveStrategy``, AdamW, a shuffled loader, the
trainer's ``fit`` timed); TRL's with ``trl_peer`` (the trainer built on a freshly loaded model,
``train()`` timed), both sides sharing ``trl_training_arguments``' optimizer and schedule settings.
"""

import argparse
import os
import tempfile
from typing import Callable, Dict, List, NamedTuple, Optional

import torch

from compare_common import (Side, Stopwatch, Timing, add_common_arguments, alternate, build_tokenizer,
                            model_description, ratios, report, resolve_data, save_models, set_threads, version_of)


def trl_training_arguments(args: argparse.Namespace, output_dir: str, logging_steps: int,
                           batch_size: Optional[int] = None) -> dict:
    """The ``transformers.TrainingArguments`` fields every TRL side sets alike (``compare_common``'s rules):
    ``--steps`` steps of ``batch_size`` rows (default ``--batch_size``), AdamW (torch, weight decay 0, constant
    ``--lr``), clipping at 1.0, float32, no gradient accumulation or checkpointing, no evaluation or saving."""
    return dict(output_dir=output_dir, max_steps=args.steps, num_train_epochs=1,
                per_device_train_batch_size=batch_size or args.batch_size, gradient_accumulation_steps=1,
                learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                max_grad_norm=1.0, optim="adamw_torch", bf16=False, fp16=False, gradient_checkpointing=False,
                use_cpu=args.device == "cpu", report_to="none", save_strategy="no", eval_strategy="no",
                logging_steps=logging_steps, disable_tqdm=True, dataloader_num_workers=0, seed=args.seed)


def naive_setup(args: argparse.Namespace, model: torch.nn.Module, examples, collate_fn):
    """minichatgpt's side of a training comparison: ``NaiveStrategy`` on ``--device``, ``model`` with AdamW
    (weight decay 0, ``--lr``) prepared, and a shuffled loader of ``--batch_size`` examples.

    Returns ``(strategy, model, optim, loader)``."""
    from minichatgpt.trainer.strategies import NaiveStrategy

    strategy = NaiveStrategy(args.device)
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    model, optim = strategy.prepare((model, optim))
    loader = strategy.setup_dataloader(examples, args.batch_size, shuffle=True, collate_fn=collate_fn, seed=args.seed)
    return strategy, model, optim, loader


def naive_side(name: str, args: argparse.Namespace, load_model: Callable[[], torch.nn.Module], examples,
               collate_fn, make_trainer: Callable, tokens: Callable[[], int]) -> Side:
    """minichatgpt's contender: each run loads the model, ``naive_setup``s it, builds
    ``make_trainer(strategy, model, optim)`` (all untimed) and times ``trainer.fit(loader)``; ``tokens()``,
    asked afterwards, counts the work."""
    def run() -> Timing:
        strategy, model, optim, loader = naive_setup(args, load_model(), examples, collate_fn)
        trainer = make_trainer(strategy, model, optim)
        return timed_call(args.device, lambda: trainer.fit(loader), tokens)

    return Side(name, run)


def timed_call(device: str, call: Callable[[], object], tokens: Callable[[], int]) -> Timing:
    """Time ``call()`` (a trainer's ``fit`` or ``train``); ``tokens()``, asked afterwards, counts its work."""
    with Stopwatch(device) as watch:
        call()
    return watch.timing(tokens())


def causal_lm(path: str) -> torch.nn.Module:
    """The saved causal LM, float32, as the TRL sides load it."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def trl_peer(trainer_cls, device: str, load_model: Callable[[], torch.nn.Module], tokens_per_step: int,
             **trainer_kwargs) -> Side:
    """A TRL contender: each run builds ``trainer_cls(model=load_model(), **trainer_kwargs)`` (untimed) and
    times ``trainer.train()``; the work is ``global_step x tokens_per_step``."""
    def run() -> Timing:
        trainer = trainer_cls(model=load_model(), **trainer_kwargs)
        return timed_call(device, trainer.train, lambda: trainer.state.global_step * tokens_per_step)

    return Side(f"trl {trainer_cls.__name__} {version_of('trl')}", run)


class TRLComparison(NamedTuple):
    """One ``compare_*.py`` script against a TRL trainer: what ``compare_with_trl`` needs to run it.

    ``make_examples(tokenizer, data, seq_len, n)`` builds the data; ``model`` names the ``ModelDirs`` field
    both sides load (``lm`` or ``classifier``); ``ours(args, model_dir, examples, pad_id)`` and
    ``peer(args, model_dir, tokenizer, examples, out_dir)`` build the ``Side``s; ``workload`` describes the
    batches for the header, formatted with the arguments and ``data``; ``defaults`` are the script's
    ``steps``, ``batch_size``, ``seq_len`` and ``lr``; ``extra_arguments(parser)`` adds its own flags.
    """
    benchmark: str
    doc: str
    defaults: Dict[str, float]
    make_examples: Callable
    model: str
    ours: Callable
    peer: Callable
    peer_name: str
    workload: str
    extra_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None

    def build_parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(description=self.doc.split("\n")[0])
        add_common_arguments(parser, **self.defaults)
        if self.extra_arguments is not None:
            self.extra_arguments(parser)
        return parser

    def main(self, argv: Optional[List[str]] = None) -> dict:
        return compare_with_trl(self, self.build_parser().parse_args(argv))


def compare_with_trl(spec: TRLComparison, args: argparse.Namespace) -> dict:
    """The body of ``compare_sft`` / ``compare_rm`` / ``compare_dpo`` / ``compare_grpo``: data, one saved
    model, the two sides alternated, the report."""
    set_threads(args.threads)
    args.data = data = resolve_data(args.data)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = build_tokenizer(data)
    examples = spec.make_examples(tokenizer, data, args.seq_len, args.steps * args.batch_size)
    sides, skipped = [], {}
    with tempfile.TemporaryDirectory(prefix=f"{spec.benchmark}_") as tmp:
        dirs = save_models(tokenizer, tmp, args.n_layer, args.n_embd, args.n_head, max(1024, args.seq_len),
                           args.seed)
        model_dir = getattr(dirs, spec.model)
        sides.append(spec.ours(args, model_dir, examples, tokenizer.pad_token_id))
        if args.no_peer:
            skipped[spec.peer_name] = "--no_peer"
        elif version_of("trl") is None:
            skipped[spec.peer_name] = "trl is not installed (pip install trl)"
        else:
            sides.append(spec.peer(args, model_dir, tokenizer, examples, os.path.join(tmp, "trl")))
        results = alternate(sides, args.repeats, args.warmup)
    header = (f"{model_description(args, dirs, len(tokenizer))}{spec.workload.format(**vars(args))}; median of "
              f"{args.repeats} alternating runs (+{args.warmup} warm-up); {args.device}, "
              f"{torch.get_num_threads()} thread(s)")
    return report(spec.benchmark, args, header, results,
                  ratios(results, [(sides[0].name, s.name) for s in sides[1:]]), skipped)
