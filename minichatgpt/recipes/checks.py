"""Up-front checks of a stage's command line, run before any model is built or any step is trained.

A problem found here is a :class:`UsageError`: one paragraph naming the flag and its value. The
``minichatgpt`` command and the example scripts print it as ``<prog>: error: <message>`` and exit with
code 2, the code argparse uses for its own errors (``run_command``); the data layer's ``DataError`` is
reported the same way. Any other exception keeps its traceback: it is a bug, not a usage error.

``validate(args)`` looks only at the flags a namespace has, so one function serves every stage:

* numbers: sizes, counts and lengths >= 1, learning rates > 0, ratios and coefficients in range, finite;
  flags that cannot go together (``--precision``/``--attn_implementation``: ``model_flags.precision_problem``);
* ``--strategy``: its package (deepspeed, colossalai) is installed, a CUDA device exists where it needs
  one, and a torchrun launch sets every variable the process group reads;
* models (``--pretrain``, ``--rm_pretrain``, ``--tokenizer``, ``--rm_path``): a local path exists and holds a
  config and weights; a hub name resolves (offline, an uncached name fails here, not after the data loads);
* data (``--dataset``, ``--eval_dataset``, ``--prompt_path``, ``--pretrain_dataset``, the pipeline's
  ``--*_dataset``): a value that looks like a path names an existing file (``org/name`` is a hub dataset);
* outputs (``--save_path``, the pipeline's ``--output_dir``, ``--metrics_path``): writable, with free space;
* the tokenizer fits the model: its length and its pad / EOS ids are below the config's ``vocab_size``
  (only the config is read, never the weights; GGUF files are not inspected).

Free space: a stage needs about the float32 size of the models it writes, counted from the safetensors
headers of ``--pretrain`` (no weights are read), and at least ``MIN_FREE_MB``. The environment variable
``MINICHATGPT_MIN_FREE_MB`` replaces that estimate by a fixed number of megabytes (0 turns the check off).
"""

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import shlex
import shutil
import struct
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..data.readers import DataError, looks_like_path
from .model_flags import precision_problem

MIN_FREE_MB = 100
FREE_SPACE_ENV = "MINICHATGPT_MIN_FREE_MB"
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

MODEL_FLAGS = ("pretrain", "rm_pretrain")
DATA_FLAGS = ("dataset", "eval_dataset", "prompt_path", "pretrain_dataset", "sft_dataset", "rm_dataset",
              "prompt_dataset")
PATH_FLAGS = MODEL_FLAGS + DATA_FLAGS + ("tokenizer", "rm_path", "save_path", "output_dir", "metrics_path",
                                         "tensorboard_dir", "resume")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model",
                   "vocab.txt")


class UsageError(Exception):
    """A bad flag value or launch environment, found before training; the message names the flag."""


# ---------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------
Rule = Tuple[str, Callable[[float], bool]]
POSITIVE_INT: Rule = ("an integer >= 1", lambda v: v >= 1)
NON_NEGATIVE_INT: Rule = ("an integer >= 0", lambda v: v >= 0)
LENGTH: Rule = ("an integer >= 2", lambda v: v >= 2)
POSITIVE: Rule = ("a finite number > 0", lambda v: v > 0)
NON_NEGATIVE: Rule = ("a finite number >= 0", lambda v: v >= 0)
UNIT: Rule = ("a number in [0, 1]", lambda v: 0 <= v <= 1)

# Flag -> rule, for whichever of these a stage has. None (an optional flag left out) is not checked.
NUMBER_RULES: Dict[str, Rule] = {
    **{name: POSITIVE_INT for name in ("batch_size", "accumulation_steps", "max_epochs", "log_interval",
                                       "max_datasets_size", "num_episodes", "max_timesteps", "update_timesteps",
                                       "train_batch_size", "experience_batch_size", "ptx_batch_size", "kl_horizon",
                                       "max_new_tokens", "eval_prompts", "save_total_limit", "max_nonfinite_steps")},
    **{name: NON_NEGATIVE_INT for name in ("lora_rank", "save_interval", "top_k", "buffer_limit")},
    **{name: LENGTH for name in ("max_len", "max_input_len")},
    **{name: POSITIVE for name in ("lr", "actor_lr", "critic_lr", "eps_clip", "target_kl", "score_clip")},
    **{name: NON_NEGATIVE for name in ("weight_decay", "max_grad_norm", "kl_coef", "value_clip")},
    **{name: UNIT for name in ("warmup_ratio", "ptx_coef", "gamma", "lam")},
    "eval_ratio": ("a number in [0, 1) (1 would leave nothing to train on)", lambda v: 0 <= v < 1),
    "top_p": ("a number in (0, 1]", lambda v: 0 < v <= 1),
    "seed": ("an integer in [0, 2**32 - 1]", lambda v: 0 <= v < 2 ** 32),
}


def check_numbers(args: argparse.Namespace) -> None:
    """Every numeric flag of ``args`` is in its range (see ``NUMBER_RULES``) and finite."""
    for name, (expected, ok) in NUMBER_RULES.items():
        value = getattr(args, name, None)
        if value is None or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise UsageError(f"--{name} must be {expected}, got {value!r}")
    temperature = getattr(args, "temperature", None)
    if temperature is not None and not getattr(args, "greedy", False) and \
            not (math.isfinite(temperature) and temperature > 0):
        raise UsageError(f"--temperature must be a finite number > 0 when sampling (or pass --greedy), "
                         f"got {temperature!r}")


def check_combinations(args: argparse.Namespace) -> None:
    """Flags that are each in range but cannot go together; ``--resume`` names a directory."""
    if problem := precision_problem(args):
        raise UsageError(problem)
    if getattr(args, "update_timesteps", None) and getattr(args, "num_episodes", None) and \
            getattr(args, "max_timesteps", None):
        total = args.num_episodes * args.max_timesteps
        if args.update_timesteps > total:
            raise UsageError(f"--update_timesteps {args.update_timesteps} is more than the {total} timesteps of "
                             f"the whole run (--num_episodes {args.num_episodes} x --max_timesteps "
                             f"{args.max_timesteps}): no PPO update would ever run")
    resume = getattr(args, "resume", None)
    if resume and not getattr(args, "save_path", None):
        raise UsageError(f"--resume {resume!r} needs --save_path (checkpoints live in SAVE_PATH/checkpoints)")
    if resume and resume != "auto" and not os.path.isdir(os.path.expanduser(resume)):
        raise UsageError(f"--resume {resume!r} is not a directory; give 'auto' or a checkpoint directory")
    if getattr(args, "rm_path", None) and getattr(args, "lora_rank", 0) > 0:
        raise UsageError(f"--rm_path {args.rm_path!r} holds plain weights and cannot initialize a LoRA critic "
                         f"(--lora_rank {args.lora_rank}); give the reward model's save_pretrained directory with "
                         "--rm_pretrain instead")


# ---------------------------------------------------------------------------------------------
# strategy and launch environment
# ---------------------------------------------------------------------------------------------
def installed_version(package: str) -> Optional[str]:
    """The installed version of ``package`` without importing it (``""`` if it has no metadata), or None."""
    if importlib.util.find_spec(package) is None:
        return None
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def check_strategy(name: str, env: Optional[Dict[str, str]] = None) -> None:
    """``--strategy name`` can start here: its engine is installed, its device exists, its launch is whole."""
    from packaging.version import Version

    from ..trainer.strategies import STRATEGY_NAMES
    from ..trainer.strategies.colossalai import INSTALL_HINT
    from ..trainer.strategies.deepspeed import MIN_VERSION

    env = os.environ if env is None else env
    if name not in STRATEGY_NAMES:
        raise UsageError(f"--strategy {name!r} is not a strategy; choose from {', '.join(STRATEGY_NAMES)}")
    if name.startswith("deepspeed"):
        version = installed_version("deepspeed")
        if version is None:
            raise UsageError(f"--strategy {name} needs DeepSpeed, which is not installed: pip install -e "
                             f".[deepspeed] (deepspeed>={MIN_VERSION}), or use --strategy ddp or fsdp")
        if version and Version(version) < Version(MIN_VERSION):
            raise UsageError(f"--strategy {name} needs deepspeed>={MIN_VERSION}, found {version}: "
                             f"pip install 'deepspeed>={MIN_VERSION}'")
    if name.startswith("colossalai"):
        if not torch.cuda.is_available():
            raise UsageError(f"--strategy {name} needs a CUDA device and none is visible; on the CPU use "
                             "--strategy ddp, fsdp or deepspeed_*")
        if installed_version("colossalai") is None:
            raise UsageError(f"--strategy {name}: colossalai is not installed. {INSTALL_HINT}")
        missing = [var for var in TORCHRUN_VARS + ("LOCAL_RANK",) if var not in env]
        if missing and not torch.distributed.is_initialized():
            raise UsageError(f"--strategy {name} must be started by torchrun (ColossalAI reads {', '.join(missing)} "
                             f"from the environment): torchrun --nproc_per_node N <script> --strategy {name} ...")
    check_launch(name, env)


def check_launch(name: str, env: Dict[str, str]) -> None:
    """A torchrun-style environment is whole, and fits the strategy and the visible devices."""
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return  # a plain run: distributed strategies form a group of one (see init_process_group)
    missing = [var for var in TORCHRUN_VARS if var not in env]
    if missing:
        raise UsageError(f"--strategy {name}: the distributed launch is missing the environment variables "
                         f"{', '.join(missing)}; start the script with `torchrun --nproc_per_node N ...` "
                         "(see docs/distributed.md)")
    world_size = _int_env(env, "WORLD_SIZE")
    if name == "naive" and world_size > 1:
        raise UsageError(f"--strategy naive runs one process, but WORLD_SIZE={world_size}: each of the "
                         f"{world_size} processes would train its own copy and write the same files; use "
                         "--strategy ddp, fsdp or deepspeed_* under torchrun")
    local_rank = _int_env(env, "LOCAL_RANK", default="0")
    if torch.cuda.is_available() and local_rank >= torch.cuda.device_count():
        raise UsageError(f"--strategy {name}: LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA "
                         "device(s) are visible; start at most that many processes per node")


def _int_env(env: Dict[str, str], var: str, default: Optional[str] = None) -> int:
    try:
        return int(env.get(var, default))
    except (TypeError, ValueError):
        raise UsageError(f"the environment variable {var}={env.get(var)!r} must be an integer (set by torchrun)") \
            from None


# ---------------------------------------------------------------------------------------------
# models and tokenizers
# ---------------------------------------------------------------------------------------------
def _looks_like_local_model(value: str) -> bool:
    """``org/name`` may be a hub model; these can only be local paths (as ``nn.loading`` decides)."""
    return value.startswith((".", "/", "~")) or os.path.isabs(value) or value.count("/") > 1 or \
        value.endswith(".gguf")


def _first_line(err: Exception) -> str:
    return str(err).strip().split("\n")[0]


def check_model_source(flag: str, value: str):
    """A model location that loads: returns its config (read alone), or None for a ``.gguf`` file."""
    from ..nn.loading import quiet_transformers, to_config

    path = os.path.expanduser(value)
    exists = os.path.exists(path)
    if not exists and _looks_like_local_model(value):
        raise UsageError(f"{flag} {value!r} does not exist")
    if exists and value.endswith(".gguf"):
        return None
    if exists and not os.path.isdir(path):
        raise UsageError(f"{flag} {value!r} is a file; expected a save_pretrained directory (config.json and "
                         "weights), a .gguf file or a Hugging Face hub name")
    if exists and not any(os.path.isfile(os.path.join(path, name)) for name in WEIGHT_FILES) and \
            not any(name.endswith(".safetensors") for name in os.listdir(path)):
        raise UsageError(f"{flag} {value!r} has no model weights (expected model.safetensors or "
                         "pytorch_model.bin, as save_pretrained writes them)")
    try:
        with quiet_transformers():
            return to_config(path)
    except (OSError, ValueError) as err:
        where = "cannot read its config.json" if exists else \
            "is not a local path, and loading it from the Hugging Face hub failed (offline, or no such model)"
        raise UsageError(f"{flag} {value!r} {where}: {_first_line(err)}") from err


def check_tokenizer_source(flag: str, value: str):
    """Load the tokenizer at ``value`` as the recipes do (``load_tokenizer``), naming ``flag`` on failure."""
    from ..nn.loading import load_tokenizer, quiet_transformers

    path = os.path.expanduser(value)
    if not os.path.exists(path) and _looks_like_local_model(value):
        raise UsageError(f"{flag} {value!r} does not exist")
    if os.path.isfile(path) and not value.endswith(".gguf"):
        raise UsageError(f"{flag} {value!r} is a file; expected a directory with the tokenizer's files, a .gguf "
                         "file or a Hugging Face hub name")
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, n)) for n in TOKENIZER_FILES):
        raise UsageError(f"{flag} {value!r} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}...); save the "
                         "tokenizer there too (tokenizer.save_pretrained) or pass --tokenizer")
    try:
        with quiet_transformers():
            return load_tokenizer(value)
    except (OSError, ValueError) as err:
        raise UsageError(f"{flag} {value!r}: cannot load a tokenizer from it: {_first_line(err)}") from err


def check_vocab(tokenizer_flag: str, tokenizer_source: str, tokenizer, model_flag: str, model_source: str,
                config) -> None:
    """Every id the tokenizer can produce (and its pad and EOS ids) indexes the model's embedding table."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab_size = getattr(text_config, "vocab_size", None)
    if not vocab_size:
        return
    if len(tokenizer) > vocab_size:
        raise UsageError(f"{tokenizer_flag} {tokenizer_source!r} has {len(tokenizer)} tokens but the model of "
                         f"{model_flag} {model_source!r} has vocab_size {vocab_size}: ids >= {vocab_size} would "
                         "index past its embedding table. Use the model's own tokenizer, or resize the model's "
                         "embeddings (model.resize_token_embeddings) and save it first")
    for name in ("pad", "eos"):
        token_id = getattr(tokenizer, f"{name}_token_id")
        if token_id is not None and token_id >= vocab_size:
            raise UsageError(f"{tokenizer_flag} {tokenizer_source!r}: its {name} token id {token_id} is not below "
                             f"the vocab_size {vocab_size} of {model_flag} {model_source!r}")


def check_models(args: argparse.Namespace) -> None:
    """Model, tokenizer and ``--rm_path`` locations, and the tokenizer against each model's vocabulary."""
    configs = {}
    for name in MODEL_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            configs[f"--{name}"] = (value, check_model_source(f"--{name}", value))
    rm_path = getattr(args, "rm_path", None)
    if rm_path is not None and not os.path.isfile(os.path.expanduser(rm_path)):
        raise UsageError(f"--rm_path {rm_path!r} " + ("is a directory; expected a state dict file (.pt or "
                         ".safetensors)" if os.path.isdir(rm_path) else "does not exist"))
    tokenizer_flag = "--tokenizer" if getattr(args, "tokenizer", None) else "--pretrain"
    source = getattr(args, "tokenizer", None) or getattr(args, "pretrain", None)
    if source is None or source.endswith(".gguf"):
        return  # the built-in model is sized to its tokenizer; GGUF tokenizers are slow to build
    tokenizer = check_tokenizer_source(tokenizer_flag, source)
    for model_flag, (value, config) in configs.items():
        if config is not None:
            check_vocab(tokenizer_flag, source, tokenizer, model_flag, value, config)


# ---------------------------------------------------------------------------------------------
# data and outputs
# ---------------------------------------------------------------------------------------------
def check_paths_given(args: argparse.Namespace) -> None:
    """Path flags are not empty (that would fall back to a default silently: ``args.dataset or
    demo_records()``) and hold no NUL character (``open`` would fail deep inside a stage)."""
    for name in PATH_FLAGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and not value.strip():
            raise UsageError(f"--{name} is empty; give a path or leave the flag out")
        if isinstance(value, str) and "\0" in value:
            raise UsageError(f"--{name} {value!r} contains a NUL character, which no path may hold")


def check_data(args: argparse.Namespace) -> None:
    """Data flags that look like local paths name existing files (anything else is a hub dataset name)."""
    for name in DATA_FLAGS:
        value = getattr(args, name, None)
        if value and not os.path.exists(os.path.expanduser(value)) and looks_like_path(value):
            raise UsageError(f"--{name} {value!r}: no such file")


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def saved_model_bytes(source: Optional[str]) -> int:
    """About what a model saved in float32 from ``source`` takes on disk; 0 when unknown (a hub name).

    Parameters are counted from the safetensors headers (8-byte length + JSON), so no weight is read;
    other weight files count with their size; a quantized ``.gguf`` file at least 4 times its size.
    """
    path = os.path.expanduser(source) if source else ""
    if not path or not os.path.exists(path):
        return 0
    if os.path.isfile(path):
        return 4 * os.path.getsize(path) if path.endswith(".gguf") else os.path.getsize(path)
    total = 0
    for name in os.listdir(path):
        file = os.path.join(path, name)
        if name.endswith(".safetensors"):
            total += 4 * _safetensors_numel(file)
        elif name.endswith(".bin") and not name.startswith("training_args"):
            total += os.path.getsize(file)
    return total


def _safetensors_numel(path: str) -> int:
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return os.path.getsize(path)  # unreadable header: the load reports it; estimate by size


def required_free_bytes(model_source: Optional[str], copies: int) -> int:
    """Free space an output directory needs: ``copies`` float32 models, at least ``MIN_FREE_MB``."""
    override = os.environ.get(FREE_SPACE_ENV)
    if override is not None:
        try:
            return int(float(override) * 2 ** 20)
        except ValueError:
            raise UsageError(f"the environment variable {FREE_SPACE_ENV}={override!r} must be a number of "
                             "megabytes") from None
    return max(MIN_FREE_MB * 2 ** 20, copies * saved_model_bytes(model_source))


def check_output_dir(flag: str, path: str, required_bytes: int = 0) -> None:
    """``path`` is, or can be created as, a writable directory on a filesystem with enough free space.

    Nothing is created: the nearest existing ancestor is probed with a temporary file, which also
    catches read-only filesystems and running as root, where permission bits say little.
    """
    target = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(target) and not os.path.isdir(target):
        raise UsageError(f"{flag} {path!r} is a file, not a directory")
    ancestor = _existing_ancestor(target)
    if not os.path.isdir(ancestor):
        raise UsageError(f"{flag} {path!r} cannot be created: {ancestor!r} is a file")
    try:
        with tempfile.TemporaryFile(dir=ancestor, prefix=".minichatgpt-write-test"):
            pass
    except OSError as err:
        raise UsageError(f"{flag} {path!r} is not writable (cannot create a file in {ancestor}: "
                         f"{err.strerror or err})") from err
    free = shutil.disk_usage(ancestor).free
    if free < required_bytes:
        raise UsageError(f"{flag} {path!r}: its filesystem has {free / 2 ** 20:.0f} MB free, and this run writes "
                         f"about {required_bytes / 2 ** 20:.0f} MB; free some space, choose another {flag}, or set "
                         f"{FREE_SPACE_ENV} to the megabytes to require (0 skips this check)")


def check_outputs(args: argparse.Namespace, copies: int) -> None:
    save_path = getattr(args, "save_path", None)
    if save_path:
        check_output_dir("--save_path", save_path, required_free_bytes(getattr(args, "pretrain", None), copies))
    metrics_path = getattr(args, "metrics_path", None)
    if metrics_path:
        if os.path.isdir(metrics_path):
            raise UsageError(f"--metrics_path {metrics_path!r} is a directory; expected a .jsonl file name")
        check_output_dir("--metrics_path", os.path.dirname(os.path.abspath(metrics_path)))


# ---------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------
def validate(args: argparse.Namespace) -> None:
    """Run every up-front check on a stage's parsed flags (sft, rm or ppo); raises UsageError.

    Cheap checks come first; the tokenizer and model configs are read last, and no weights are read.
    """
    check_numbers(args)
    check_combinations(args)
    if getattr(args, "strategy", None) is not None:
        check_strategy(args.strategy)
    check_paths_given(args)
    check_data(args)
    check_models(args)
    check_outputs(args, copies=2 if hasattr(args, "rm_pretrain") else 1)  # PPO writes the actor and the critic


def validate_pipeline(args: argparse.Namespace) -> None:
    """The pipeline's own flags, then each stage's flags as the pipeline will pass them, before SFT starts.

    The stages' model and output locations are the pipeline's (``OUTPUT_DIR/sft`` does not exist yet),
    so only their numbers, combinations, strategy and data are checked here; ``setup`` checks the rest
    when each stage starts.
    """
    check_numbers(args)
    check_strategy(args.strategy)
    check_paths_given(args)
    check_data(args)
    check_models(args)
    # sft + rm + the PPO actor and critic
    check_output_dir("--output_dir", args.output_dir, required_free_bytes(args.pretrain, copies=4))
    for stage, ns in pipeline_stage_args(args).items():
        try:
            check_numbers(ns)
            check_combinations(ns)
            check_strategy(ns.strategy)
            check_data(ns)
        except UsageError as err:
            raise UsageError(f"the {stage} stage (--{stage}_args {getattr(args, f'{stage}_args')!r}): {err}") from err


def pipeline_stage_args(args: argparse.Namespace) -> Dict[str, argparse.Namespace]:
    """Each stage's namespace as ``pipeline.main`` builds it; a bad ``--{stage}_args`` is a UsageError."""
    from . import pipeline, ppo, rm, sft

    for stage in pipeline.STAGES:
        flag, extra = f"--{stage}_args", getattr(args, f"{stage}_args")
        try:
            shlex.split(extra)
        except ValueError as err:
            raise UsageError(f"{flag} {extra!r} cannot be split into flags: {err}") from None
    namespaces = {}
    for stage, argv in pipeline.stage_argvs(args).items():
        flag, extra = f"--{stage}_args", getattr(args, f"{stage}_args")
        parser = {"sft": sft, "rm": rm, "ppo": ppo}[stage].build_parser()
        parser.error = _raise_usage_error(flag, extra)
        namespaces[stage] = parser.parse_args(argv)
    return namespaces


def _raise_usage_error(flag: str, value: str):
    def error(message: str):
        raise UsageError(f"{flag} {value!r}: {message}")

    return error


def check_command(command: str, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` as ``minichatgpt <command>`` does and run its up-front checks, without training.

    Returns the namespace; argparse errors exit with code 2 as usual, the checks raise UsageError.
    """
    from . import pipeline, ppo, rm, sft
    from .common import parse_with_demo_defaults

    argv = list(argv)
    if command == "pipeline":
        args = pipeline.build_parser().parse_args(argv)
        validate_pipeline(args)
        return args
    module, data_flag = {"sft": (sft, "dataset"), "rm": (rm, "dataset"), "ppo": (ppo, "prompt_path")}[command]
    args = parse_with_demo_defaults(module.build_parser(), argv, module.DEMO_DEFAULTS, data_flag)
    validate(args)
    return args


def run_command(prog: str, main: Callable[[Optional[List[str]]], object], argv: Optional[List[str]] = None) -> int:
    """Run a recipe's ``main``; a UsageError or DataError becomes ``prog: error: message`` and exit code 2."""
    try:
        main(argv)
    except (UsageError, DataError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
