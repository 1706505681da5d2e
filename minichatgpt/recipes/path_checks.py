"""Up-front checks of the files a run reads and writes: models, tokenizers, data and output directories.

Only configs and headers are read, never weights, so these run in seconds before any model is built:

* models (``--pretrain``, ``--rm_pretrain``, ``--tokenizer``, ``--rm_path``): a local path exists and holds a
  config and weights; a hub name resolves (offline, an uncached name fails here, not after the data loads);
* the tokenizer fits the model: its length and its pad / EOS ids are below the config's ``vocab_size``
  (GGUF files are not inspected);
* data (``--dataset``, ``--eval_dataset``, ``--prompt_path``, ``--pretrain_dataset``, the pipeline's
  ``--*_dataset``): a value that looks like a path names an existing file (``org/name`` is a hub dataset);
* outputs (``--save_path``, the pipeline's ``--output_dir``, ``--metrics_path``): writable, with free space.

Free space: a stage needs about the float32 size of the models it writes, counted from the safetensors
headers of ``--pretrain`` (no weights are read), and at least ``MIN_FREE_MB``. The environment variable
``MINICHATGPT_MIN_FREE_MB`` replaces that estimate by a fixed number of megabytes (0 turns the check off).
"""

import json
import math
import os
import shutil
import struct
import tempfile
from typing import Optional

from ..config import UsageError
from ..data.readers import looks_like_path

MIN_FREE_MB = 100
FREE_SPACE_ENV = "MINICHATGPT_MIN_FREE_MB"
MODEL_FLAGS = ("pretrain", "rm_pretrain")
DATA_FLAGS = ("dataset", "eval_dataset", "prompt_path", "pretrain_dataset", "sft_dataset", "rm_dataset",
              "prompt_dataset")
PATH_FLAGS = MODEL_FLAGS + DATA_FLAGS + ("tokenizer", "rm_path", "save_path", "output_dir", "metrics_path",
                                         "tensorboard_dir", "resume")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model",
                   "vocab.txt")


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


def check_models(args) -> None:
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
def check_paths_given(args) -> None:
    """Path flags are not empty (that would fall back to a default silently: ``args.dataset or
    demo_records()``) and hold no NUL character (``open`` would fail deep inside a stage)."""
    for name in PATH_FLAGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and not value.strip():
            raise UsageError(f"--{name} is empty; give a path or leave the flag out")
        if isinstance(value, str) and "\0" in value:
            raise UsageError(f"--{name} {value!r} contains a NUL character, which no path may hold")


def check_data(args) -> None:
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


STATE_DICT_SUFFIXES = (".pt", ".pth")


def saves_state_dict(save_path: Optional[str]) -> bool:
    """A ``--save_path`` ending in ``.pt``/``.pth`` names a state dict file (``strategy.save_model``), as
    in the original project (``train_reward_model.py --save_path rmstatic.pt``); anything else names a
    Hugging Face directory."""
    return bool(save_path) and save_path.endswith(STATE_DICT_SUFFIXES)


def output_dir(save_path: str) -> str:
    """Where a run's metrics and checkpoints go: ``--save_path`` itself, or for a state dict file
    ``rmstatic.pt`` the directory ``rmstatic`` beside it."""
    return os.path.splitext(save_path)[0] if saves_state_dict(save_path) else save_path


def check_outputs(args, copies: int) -> None:
    save_path = getattr(args, "save_path", None)
    if saves_state_dict(save_path):
        if os.path.isdir(save_path):
            raise UsageError(f"--save_path {save_path!r} is a directory; a name ending in .pt names a state dict "
                             "file")
        save_path = os.path.dirname(os.path.abspath(save_path))
    if save_path:
        check_output_dir("--save_path", save_path, required_free_bytes(getattr(args, "pretrain", None), copies))
    metrics_path = getattr(args, "metrics_path", None)
    if metrics_path:
        if os.path.isdir(metrics_path):
            raise UsageError(f"--metrics_path {metrics_path!r} is a directory; expected a .jsonl file name")
        check_output_dir("--metrics_path", os.path.dirname(os.path.abspath(metrics_path)))
