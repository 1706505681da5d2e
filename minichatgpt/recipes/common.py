"""What every stage's script shares: flags, seeding, tokenizer and data set-up, the embedded default.

A recipe parses flags, builds models and data through the library, calls ``fit`` and saves; no
math and no per-family branches live here.
"""

import argparse
import json
import os
from typing import Optional

import torch
from torch.utils.data import Dataset, Subset

from .. import demo
from ..nn import load_tokenizer
from ..trainer import MetricsLogger
from ..trainer.strategies import STRATEGY_NAMES, Strategy, build_strategy
from ..trainer.strategies.utils import set_seed
from .checks import UsageError, validate
from .model_flags import add_model_arguments, model_options, save_dtype, strategy_options

MODEL_FAMILIES = ("auto", "gpt2", "opt", "bloom", "llama")


class Interrupted(SystemExit):
    """A stage stopped by SIGTERM/SIGINT after writing its checkpoint: exits with code 128 + the signal
    number (no traceback) and writes no final model directory, since training did not finish."""

    def __init__(self, stage: str, step: int, signum: int):
        super().__init__(128 + signum)
        self.stage, self.step = stage, step


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of every stage (names kept from the original project's scripts)."""
    parser.add_argument("--strategy", default="naive", choices=STRATEGY_NAMES,
                        help="compute backend; distributed ones run under torchrun")
    parser.add_argument("--model", default="auto", choices=MODEL_FAMILIES,
                        help="model family; kept for compatibility, the architecture is read from the checkpoint")
    parser.add_argument("--pretrain", default=None,
                        help="hub name, save_pretrained directory or .gguf file; default: the built-in tiny model")
    parser.add_argument("--tokenizer", default=None, help="tokenizer location if not the --pretrain one")
    parser.add_argument("--save_path", default=None, help="output directory (Hugging Face format + tokenizer)")
    parser.add_argument("--lora_rank", type=int, default=0, help="> 0 trains LoRA adapters of this rank only")
    parser.add_argument("--lora_train_bias", default="none", choices=("none", "all", "lora_only"))
    parser.add_argument("--grad_checkpoint", action="store_true", help="gradient checkpointing (less memory)")
    parser.add_argument("--max_len", type=int, default=512, help="maximum tokens per training sequence")
    parser.add_argument("--max_datasets_size", type=int, default=None, help="use at most this many records")
    parser.add_argument("--log_interval", type=int, default=10, help="optimizer steps between logged metrics")
    parser.add_argument("--metrics_path", default=None, help="JSONL metrics file (default: SAVE_PATH/metrics.jsonl)")
    parser.add_argument("--tensorboard_dir", default=None, help="also log to TensorBoard (needs tensorboard)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--save_interval", type=int, default=0,
                        help="write a resumable checkpoint (SAVE_PATH/checkpoints) every N optimizer steps "
                             "(SFT, RM) or PPO updates (PPO); SIGTERM/SIGINT also write one")
    parser.add_argument("--save_total_limit", type=int, default=None, help="keep only the newest N checkpoints")
    parser.add_argument("--resume", default=None, metavar="auto|DIR",
                        help="continue from a checkpoint: 'auto' takes the newest valid one under "
                             "SAVE_PATH/checkpoints (or starts afresh when there is none), DIR a checkpoint "
                             "directory or a directory of them")
    parser.add_argument("--max_nonfinite_steps", type=int, default=5,
                        help="stop after this many updates in a row with a non-finite loss or gradient norm")
    add_model_arguments(parser)


def add_optim_arguments(parser: argparse.ArgumentParser, lr: float) -> None:
    parser.add_argument("--batch_size", type=int, default=8, help="micro-batch size per process")
    parser.add_argument("--accumulation_steps", "--accimulation_steps", dest="accumulation_steps", type=int,
                        default=1, help="micro-batches per optimizer step (the old misspelling is accepted)")
    parser.add_argument("--lr", type=float, default=lr, help="peak learning rate (AdamW)")
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--warmup_ratio", type=float, default=0.03, help="linear warm-up share of all steps")
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping (0 disables)")
    parser.add_argument("--max_epochs", type=int, default=1)
    parser.add_argument("--eval_ratio", type=float, default=0.05,
                        help="share of the dataset held out for evaluation when --eval_dataset is not given")


def setup(args: argparse.Namespace) -> Strategy:
    """Check the flags (``checks.validate``), seed, build the strategy (process group included), and create
    the output directory."""
    validate(args)
    strategy = build_strategy(args.strategy, **strategy_options(args))
    set_seed(args.seed)
    if args.save_path:
        check_writable(args.save_path)
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


def build_tokenizer(args: argparse.Namespace):
    """The tokenizer of ``--tokenizer``/``--pretrain``, or the demo word tokenizer for the built-in model."""
    source = args.tokenizer or args.pretrain
    if not source:
        return demo.build_word_tokenizer()
    return load_tokenizer(source, trust_remote_code=getattr(args, "trust_remote_code", False))


def model_source(args: argparse.Namespace, tokenizer) -> dict:
    """Keyword arguments that locate the starting weights: ``pretrained=`` or the built-in tiny config."""
    if args.pretrain:
        return {"pretrained": args.pretrain}
    return {"config": demo.tiny_model_config(len(tokenizer))}


def metrics_logger(args: argparse.Namespace, stage: str) -> Optional[MetricsLogger]:
    path = args.metrics_path or (os.path.join(args.save_path, "metrics.jsonl") if args.save_path else None)
    return MetricsLogger(path, stage, args.tensorboard_dir) if path else None


def split_eval(dataset: Dataset, eval_ratio: float, seed: int):
    """Hold out ``eval_ratio`` of ``dataset`` (at least one record) with a seeded permutation."""
    if eval_ratio <= 0 or len(dataset) < 2:
        return dataset, None
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = max(1, int(len(dataset) * eval_ratio))
    return Subset(dataset, order[n_eval:]), Subset(dataset, order[:n_eval])


def checkpointing(args: argparse.Namespace, strategy: Strategy, stage: str):
    """The stage's ``CheckpointManager`` (None without ``--save_path``) and the checkpoint ``--resume``
    names (None to start afresh)."""
    from ..trainer.checkpoint import CheckpointManager, resolve_resume

    if not args.save_path:
        if args.resume:
            raise UsageError("--resume needs --save_path (checkpoints live in SAVE_PATH/checkpoints)")
        return None, None
    config = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    manager = CheckpointManager(os.path.join(args.save_path, "checkpoints"), strategy, args.save_total_limit,
                                {"stage": stage, **config})
    try:
        resume = resolve_resume(args.resume, manager.root, manager)
    except (OSError, RuntimeError) as e:
        raise UsageError(str(e)) from e
    if args.resume == "auto" and resume is None:
        strategy.print(f"--resume auto: no checkpoint under {manager.root} yet; starting from the beginning")
    return manager, resume


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def parse_with_demo_defaults(parser: argparse.ArgumentParser, argv, demo_defaults: dict,
                             data_flag: str) -> argparse.Namespace:
    """Parse ``argv``; when neither ``--pretrain`` nor the data flag is given (the built-in demo), the
    demo's defaults replace the general ones for every flag not given explicitly."""
    probe = parser.parse_args(argv)
    if probe.pretrain is None and getattr(probe, data_flag) is None:
        parser.set_defaults(**demo_defaults)
    return parser.parse_args(argv)


def run_supervised_stage(args: argparse.Namespace, stage: str, model_cls, dataset_cls, collator_cls, trainer_cls,
                         demo_records, **trainer_kwargs) -> dict:
    """SFT and reward-model recipes: build model and data, prepare, ``fit``, save; returns final metrics."""
    from ..trainer.utils import save_pretrained, warmup_cosine_schedule

    strategy = setup(args)
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
    collate = collator_cls(tokenizer.pad_token_id)
    train_loader = strategy.setup_dataloader(train_set, args.batch_size, shuffle=True, collate_fn=collate,
                                             seed=args.seed)
    eval_loader = None if eval_set is None else \
        strategy.setup_dataloader(eval_set, args.batch_size, shuffle=False, collate_fn=collate)

    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                              weight_decay=args.weight_decay)
    model, optim = strategy.prepare((model, optim))
    total_steps = -(-len(train_loader) // args.accumulation_steps) * args.max_epochs
    scheduler = warmup_cosine_schedule(optim, total_steps, int(args.warmup_ratio * total_steps))
    logger = metrics_logger(args, stage)
    checkpoint, resume = checkpointing(args, strategy, stage)
    trainer = trainer_cls(model, strategy, optim, scheduler, max_epochs=args.max_epochs,
                          accumulation_steps=args.accumulation_steps, max_grad_norm=args.max_grad_norm,
                          log_interval=args.log_interval, save_interval=args.save_interval, checkpoint=checkpoint,
                          max_nonfinite_steps=args.max_nonfinite_steps, callbacks=[logger] if logger else [],
                          **trainer_kwargs)
    metrics = trainer.fit(train_loader, eval_loader, resume_from=resume)
    if trainer.interrupted:
        raise Interrupted(stage, trainer.step, trainer.interrupted)
    if args.save_path:
        save_pretrained(strategy, model, args.save_path, tokenizer, dtype=save_dtype(args))
    strategy.print(f"{stage}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return metrics
