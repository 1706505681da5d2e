"""Precision, engine-config and model-loading flags of every stage and the pipeline, their up-front check,
and what they turn into (``ModelFlags``, a base of every stage's config and of the pipeline's).

``--precision`` picks the compute dtype of every forward through the strategy (``build_strategy(name,
precision=...)``); ``--save_dtype`` the dtype ``save_pretrained`` writes; ``--attn_implementation`` and
``--trust_remote_code`` go to every model's ``from_pretrained``; ``--deepspeed_config`` is merged over the
config DeepSpeed strategies generate.
"""

import dataclasses
import importlib.util
import json
import os
from typing import Iterable, List, Optional

import torch

from ..config import UsageError, option
from ..nn.models import ADAPTER_DIR
from ..trainer.strategies import PRECISIONS
from .path_checks import MODEL_FLAGS
from .placement import placement_options

ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")
SAVE_DTYPES = ("auto",) + PRECISIONS


@dataclasses.dataclass
class ModelFlags:
    """Precision and model-loading fields of every stage and the pipeline (checked by ``check``)."""
    precision: Optional[str] = option(None, "compute dtype of every forward (training, rollouts, reference, critic, "
                                            "reward); master weights, optimizer state, log-probs, KL, GAE and losses "
                                            "stay float32. Default: fp32 (fp16 for the colossalai strategies)",
                                      choices=PRECISIONS)
    save_dtype: str = option("auto", "dtype of the saved Hugging Face weights; auto: the dtype the --pretrain "
                                     "checkpoint was stored in (float32 for the built-in model and GGUF files)",
                             choices=SAVE_DTYPES)
    attn_implementation: str = option("sdpa", "attention kernel of every model (flash_attention_2 needs the "
                                              "flash_attn package, a CUDA device and --precision bf16 or fp16)",
                                      choices=ATTN_IMPLEMENTATIONS)
    trust_remote_code: bool = option(False, "allow model and tokenizer code shipped with a hub checkpoint to run")
    deepspeed_config: Optional[str] = option(None, "JSON file merged over the DeepSpeed config the deepspeed_* "
                                                   "strategies generate (any DeepSpeed setting)", metavar="FILE")

    def check(self) -> None:
        problem = precision_problem(self)
        if problem:
            raise UsageError(problem)


def strategy_options(args) -> dict:
    """Keyword arguments of ``build_strategy`` besides the name: precision, the DeepSpeed config file and the RL
    stages' placement (``recipes.placement``)."""
    options = {"precision": getattr(args, "precision", None), **placement_options(args)}
    path = getattr(args, "deepspeed_config", None)
    if path:
        with open(path) as f:
            options["config"] = json.load(f)
    return options


def model_options(args, fully_trained: bool = False) -> dict:
    """Keyword arguments of the model constructors that ``ModelFlags`` controls.

    With ``--precision bf16`` under naive/DDP (which keep frozen weights in bf16), a model whose weights stay
    frozen (a LoRA model's base, a reference or reward model: ``fully_trained=False``) loads straight in bf16,
    so no float32 copy of it is ever held; a fully trained model loads in float32, its masters' precision.
    """
    bf16_frozen = getattr(args, "precision", None) == "bf16" and getattr(args, "strategy", None) in ("naive", "ddp")
    return {"attn_implementation": getattr(args, "attn_implementation", None),
            "trust_remote_code": getattr(args, "trust_remote_code", False),
            "dtype": torch.bfloat16 if bf16_frozen and not fully_trained else None}


def merged_adapter_dirs(paths: Iterable[Optional[str]]) -> List[str]:
    """The model directories among ``paths`` with an ``adapter/`` folder: LoRA fine-tunes saved with their adapters
    merged into the weights, whose small deltas a bf16/fp16 cast rounds partly away (README, "Evaluating models")."""
    paths = dict.fromkeys(p for p in paths if p)
    return [p for p in paths if os.path.isdir(os.path.join(os.path.expanduser(p), ADAPTER_DIR))]


def rounded_adapter_warning(args) -> Optional[str]:
    """Under ``--precision bf16``, the warning that names the model flags pointing at merged LoRA fine-tunes: their
    bf16 working weights lose much of the fine-tuning delta (None when there are none)."""
    if getattr(args, "precision", None) != "bf16":
        return None
    flags = {flag: getattr(args, flag, None) for flag in MODEL_FLAGS}
    merged = set(merged_adapter_dirs(flags.values()))
    named = [f"--{flag} {path}" for flag, path in flags.items() if path in merged]
    if not named:
        return None
    return (f"--precision bf16: {', '.join(named)} hold{'s' if len(named) == 1 else ''} LoRA adapters merged into "
            "the weights; bf16 weights round much of that small fine-tuning delta away (a LoRA reward model's "
            "held-out margin halved, README 'Evaluating models'), so this run starts from, or is scored by, a model "
            "partly back at its base. Use --precision fp32 with checkpoints fine-tuned with LoRA")


def save_dtype(args) -> Optional[str]:
    """``--save_dtype`` for ``save_pretrained``: None means the checkpoint's own dtype."""
    value = getattr(args, "save_dtype", "auto")
    return None if value == "auto" else value


def precision_problem(args) -> Optional[str]:
    """Why ``--precision`` does not suit the strategy, or ``--attn_implementation flash_attention_2`` cannot run
    here; None when both are fine (``checks.validate`` raises the message as a UsageError)."""
    precision, strategy = getattr(args, "precision", None), getattr(args, "strategy", None) or ""
    problem = _deepspeed_config_problem(getattr(args, "deepspeed_config", None), strategy)
    if problem:
        return problem
    if precision == "fp32" and strategy.startswith("colossalai_gemini"):
        return (f"--strategy {strategy} computes in bf16 or fp16 only (ColossalAI's Gemini has no fp32 "
                "mode): pass --precision bf16 or fp16, or use colossalai_zero2")
    if getattr(args, "attn_implementation", None) != "flash_attention_2":
        return None
    if importlib.util.find_spec("flash_attn") is None:
        return ("--attn_implementation flash_attention_2 needs the flash_attn package, which is not "
                "installed (pip install flash-attn --no-build-isolation on a CUDA machine); use "
                "--attn_implementation sdpa (the default) instead")
    if not torch.cuda.is_available():
        return ("--attn_implementation flash_attention_2 runs on CUDA devices only and none is visible; "
                "use --attn_implementation sdpa")
    if precision not in ("bf16", "fp16") and not strategy.startswith("colossalai"):
        return ("--attn_implementation flash_attention_2 computes in bf16 or fp16 only: add "
                "--precision bf16 (or fp16)")
    return None


def _deepspeed_config_problem(path: Optional[str], strategy: str) -> Optional[str]:
    if not path:
        return None
    if not strategy.startswith("deepspeed"):
        return f"--deepspeed_config {path!r} applies to the deepspeed_* strategies only, not --strategy {strategy}"
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        return f"--deepspeed_config {path!r}: cannot read it as JSON: {err}"
    return None if isinstance(config, dict) else f"--deepspeed_config {path!r} must hold a JSON object"
