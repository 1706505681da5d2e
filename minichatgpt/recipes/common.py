"""What every stage's script shares: flags, seeding, tokenizer and data set-up, the embedded default.

A recipe parses flags, builds models and data through the library, calls ``fit`` and saves; no
math and no per-family branches live here.
"""

import dataclasses
import json
import os
from typing import Optional

import torch
from torch.utils.data import Dataset, Subset

from .. import demo
from ..nn import load_tokenizer
from ..trainer import MetricsLogger
from ..config import UsageError, dump_yaml
from ..trainer.strategies import Strategy, build_strategy
from ..log import get_logger, setup_logging
from ..trainer.strategies.utils import set_seed
from .checks import validate
from .model_flags import model_options, rounded_adapter_warning, save_dtype, strategy_options
from .path_checks import output_dir, saves_state_dict

logger = get_logger(__name__)

CONFIG_FILE = "config.yaml"  # the resolved configuration each run writes into its output directory


class Interrupted(SystemExit):
    """A stage stopped by SIGTERM/SIGINT after writing its checkpoint: exits with code 128 + the signal
    number (no traceback) and writes no final model directory, since training did not finish."""

    def __init__(self, stage: str, step: int, signum: int):
        super().__init__(128 + signum)
        self.stage, self.step = stage, step


def setup(args, stage: str) -> Strategy:
    """Check the config (``checks.validate``), seed, build the strategy (process group included), create
    the output directory and write the resolved configuration into it (``config.yaml``)."""
    setup_logging(args.log_level)
    validate(args)
    strategy = build_strategy(args.strategy, **strategy_options(args))
    warning = rounded_adapter_warning(args)
    if warning and strategy.is_rank0():
        logger.warning(warning)
    set_seed(args.seed)
    if args.save_path:
        out = output_dir(args.save_path)
        check_writable(out)
        if strategy.is_rank0():
            dump_yaml(args, os.path.join(out, CONFIG_FILE), stage)
    return strategy


def check_writable(path: str) -> None:
    """Fail before training, naming the path, when the output directory cannot be written."""
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_test.{os.getpid()}")  # per process: every rank probes at once
    try:
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"--save_path {path!r} is not writable: {e}") from e


def build_tokenizer(args):
    """The tokenizer of ``--tokenizer``/``--pretrain``, or the demo word tokenizer for the built-in model."""
    source = args.tokenizer or args.pretrain
    if not source:
        return demo.build_word_tokenizer()
    return load_tokenizer(source, trust_remote_code=getattr(args, "trust_remote_code", False))


def model_source(args, tokenizer) -> dict:
    """Keyword arguments that locate the starting weights: ``pretrained=`` or the built-in tiny config."""
    if args.pretrain:
        return {"pretrained": args.pretrain}
    return {"config": demo.tiny_model_config(len(tokenizer))}


def metrics_logger(args, stage: str, strategy: Strategy) -> Optional[MetricsLogger]:
    """JSONL metrics (``--metrics_path``, default SAVE_PATH/metrics.jsonl) and the ``--report_to`` trackers,
    which only rank 0 starts."""
    from ..trainer.trackers import build_trackers

    out = output_dir(args.save_path) if args.save_path else None
    path = args.metrics_path or (os.path.join(out, "metrics.jsonl") if out else None)
    trackers = build_trackers(args.report_to, stage, out, dataclasses.asdict(args),
                              args.tensorboard_dir) if strategy.is_rank0() else []
    return MetricsLogger(path, stage, trackers=trackers) if path or trackers else None


def load_prompts(args, tokenizer, stage: str, collator_cls, strategy: Strategy, demo_prompts: int):
    """The prompts of ``--prompt_path`` (or ``demo_prompts`` of the built-in task's), reported, in a shuffled loader of
    ``--experience_batch_size`` prompts (PPO and the GRPO family)."""
    from ..data import PromptDataset

    prompts = PromptDataset(args.prompt_path or demo.prompt_records(demo_prompts, seed=args.seed + 2), tokenizer,
                            max_len=args.max_input_len, max_datasets_size=args.max_datasets_size,
                            skip_invalid=args.skip_invalid_rows)
    report_data(stage, "prompts", prompts, args.prompt_path or "the built-in task")
    return strategy.setup_dataloader(prompts, args.experience_batch_size, shuffle=True,
                                     collate_fn=collator_cls(tokenizer.pad_token_id), seed=args.seed)


def report_data(stage: str, what: str, dataset, source: str, train=None, held_out=None) -> None:
    """Log how many records ``dataset`` read, dropped (and why) and uses (``train``/``held_out``: its split)."""
    dropped = {"invalid (--skip_invalid_rows)": getattr(dataset, "num_invalid_skipped", 0),
               "whose prompt alone fills --max_len": getattr(dataset, "num_truncated_away", 0)}
    read = len(dataset) + sum(dropped.values())
    dropped_text = ", ".join(f"{n} {why}" for why, n in dropped.items() if n) or "none"
    split = f" ({len(train)} to train on, {len(held_out)} held out)" if held_out is not None else ""
    logger.info(f"{stage} {what}: read {read} records from {source}; dropped {dropped_text}; using {len(dataset)}"
                f"{split}")


def split_eval(dataset: Dataset, eval_ratio: float, seed: int):
    """Hold out ``eval_ratio`` of ``dataset`` (at least one record) with a seeded permutation."""
    if eval_ratio <= 0 or len(dataset) < 2:
        return dataset, None
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = max(1, int(len(dataset) * eval_ratio))
    return Subset(dataset, order[n_eval:]), Subset(dataset, order[:n_eval])


def checkpointing(args, strategy: Strategy, stage: str):
    """The stage's ``CheckpointManager`` (None without ``--save_path``) and the checkpoint ``--resume``
    names (None to start afresh)."""
    from ..trainer.checkpoint import CheckpointManager, resolve_resume

    if not args.save_path:
        if args.resume:
            raise UsageError("--resume needs --save_path (checkpoints live in SAVE_PATH/checkpoints)")
        return None, None
    config = {k: v for k, v in dataclasses.asdict(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    manager = CheckpointManager(os.path.join(output_dir(args.save_path), "checkpoints"), strategy,
                                args.save_total_limit, {"stage": stage, **config})
    try:
        resume = resolve_resume(args.resume, manager.root, manager)
    except (OSError, RuntimeError) as e:
        raise UsageError(str(e)) from e
    if args.resume == "auto" and resume is None:
        logger.info(f"--resume auto: no checkpoint under {manager.root} yet; starting from the beginning")
    return manager, resume


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def run_supervised_stage(args, stage: str, model_cls, dataset_cls, collator_cls, trainer_cls,
                         demo_records, **trainer_kwargs) -> dict:
    """SFT and reward-model recipes: build model and data, prepare, ``fit``, save; returns final metrics."""
    from transformers import get_scheduler

    from ..trainer.utils import save_pretrained

    strategy = setup(args, stage)
    tokenizer = build_tokenizer(args)
    with strategy.model_init_context():
        model = model_cls(**model_source(args, tokenizer), checkpoint=args.grad_checkpoint, lora_rank=args.lora_rank,
                          lora_train_bias=args.lora_train_bias,
                          **model_options(args, fully_trained=args.lora_rank == 0))
    dataset = dataset_cls(args.dataset or demo_records(), tokenizer, max_len=args.max_len,
                          max_datasets_size=args.max_datasets_size)
    if args.eval_dataset:
        train_set, eval_set = dataset, dataset_cls(args.eval_dataset, tokenizer, max_len=args.max_len)
    else:
        train_set, eval_set = split_eval(dataset, args.eval_ratio, args.seed)
    report_data(stage, "data", dataset, args.dataset or "the built-in task", train_set,
                None if args.eval_dataset else eval_set)
    if args.eval_dataset:
        report_data(stage, "held-out data", eval_set, args.eval_dataset)
    collate = collator_cls(tokenizer.pad_token_id)
    train_loader = strategy.setup_dataloader(train_set, args.batch_size, shuffle=True, collate_fn=collate,
                                             seed=args.seed)
    eval_loader = None if eval_set is None else \
        strategy.setup_dataloader(eval_set, args.batch_size, shuffle=False, collate_fn=collate)

    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                              weight_decay=args.weight_decay)
    model, optim = strategy.prepare((model, optim))
    total_steps = -(-len(train_loader) // args.accumulation_steps) * args.max_epochs
    scheduler = get_scheduler(args.lr_scheduler, optim, num_warmup_steps=int(args.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    logged = metrics_logger(args, stage, strategy)
    checkpoint, resume = checkpointing(args, strategy, stage)
    trainer = trainer_cls(model, strategy, optim, scheduler, config=args, checkpoint_manager=checkpoint,
                          callbacks=[logged] if logged else [], **trainer_kwargs)
    metrics = trainer.fit(train_loader, eval_loader, resume_from=resume)
    if trainer.interrupted:
        raise Interrupted(stage, trainer.step, trainer.interrupted)
    if saves_state_dict(args.save_path):
        strategy.save_model(model, args.save_path, only_rank0=True)
    elif args.save_path:
        save_pretrained(strategy, model, args.save_path, tokenizer, dtype=save_dtype(args))
    logger.info(f"{stage}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return metrics
