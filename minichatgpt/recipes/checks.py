"""Up-front checks of a command's configuration, run before any model is built or any step is trained.

A problem found here is a :class:`UsageError`: one paragraph naming the flag and its value. The
``minichatgpt`` command and the example scripts print it as ``<prog>: error: <message>`` and exit with
code 2, the code argparse uses for its own errors (``run_command``); the data layer's ``DataError`` is
reported the same way. Any other exception keeps its traceback: it is a bug, not a usage error.

``validate(config)`` runs, in order: each field's range rule and the config's own combination checks
(``minichatgpt.config.validate``); the strategy (its package is installed, a CUDA device exists where it
needs one, a torchrun launch sets every variable the process group reads); then the files
(``path_checks``: models, tokenizer against vocabulary, data, outputs).
"""

import importlib.metadata
import importlib.util
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .. import config as config_lib
from ..config import UsageError
from ..data.readers import DataError
from ..extras import MissingDependency, require
from ..log import setup_logging
from ..trainer.trackers import PACKAGES
from .arguments import PipelineParser, stage_parser
from .configs_pipeline import PipelineConfig, pipeline_stages
from .path_checks import (FREE_SPACE_ENV, MIN_FREE_MB, check_data, check_models, check_output_dir,  # noqa: F401
                          check_outputs, check_paths_given, check_vocab, required_free_bytes, saved_model_bytes)

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


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
            raise UsageError(f"--strategy {name} needs DeepSpeed (minichatgpt[deepspeed]), which is not installed: pip "
                             f"install --no-build-isolation 'deepspeed>={MIN_VERSION}', or use --strategy ddp or fsdp")
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


def check_trackers(report_to: List[str], tensorboard_dir: Optional[str] = None) -> None:
    """Every ``--report_to`` tracker's package (and TensorBoard's for ``--tensorboard_dir``) is installed;
    the message names the extra to install."""
    needed = [(PACKAGES[name], f"--report_to {name}") for name in report_to if name in PACKAGES]
    needed += [(("tensorboard", "tensorboard"), "--tensorboard_dir")] if tensorboard_dir else []
    for (package, extra), flag in needed:
        try:
            require((package,), extra, flag)
        except MissingDependency as err:
            raise UsageError(str(err)) from None


def _int_env(env: Dict[str, str], var: str, default: Optional[str] = None) -> int:
    try:
        return int(env.get(var, default))
    except (TypeError, ValueError):
        raise UsageError(f"the environment variable {var}={env.get(var)!r} must be an integer (set by torchrun)") \
            from None


# ---------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------
def validate(config) -> None:
    """Every up-front check of a stage's config (sft, rm or ppo); raises UsageError.

    Cheap checks come first; the tokenizer and model configs are read last, and no weights are read.
    """
    config_lib.validate(config)
    check_strategy(config.strategy)
    check_trackers(config.report_to, config.tensorboard_dir)
    check_paths_given(config)
    check_data(config)
    check_models(config)
    check_outputs(config, copies=2 if hasattr(config, "rm_pretrain") else 1)  # PPO writes the actor and the critic


def validate_pipeline(config: PipelineConfig) -> None:
    """The pipeline's own fields, then each stage's section, before SFT starts.

    The stages' model and output locations are the pipeline's (``OUTPUT_DIR/sft`` does not exist yet),
    so only their numbers, combinations, strategy and data are checked here; each stage checks the
    rest when it starts.
    """
    config_lib.validate(config, sections=False)
    check_strategy(config.strategy)
    check_trackers(config.report_to)
    check_paths_given(config)
    check_data(config)
    check_models(config)
    # sft + rm + the PPO actor and critic
    check_output_dir("--output_dir", config.output_dir, required_free_bytes(config.pretrain, copies=4))
    for stage in pipeline_stages(config.algo, config.reward_fn):
        section = getattr(config, stage)
        try:
            config_lib.validate(section)
            check_strategy(section.strategy)
            check_data(section)
        except UsageError as err:
            extra = getattr(config, f"{stage}_args")
            source = f"--{stage}_args {extra!r}" if extra else "its section of the configuration"
            raise UsageError(f"the {stage} stage ({source}): {err}") from err


def check_command(command: str, argv: Sequence[str]):
    """Parse ``argv`` as ``minichatgpt <command>`` does and run its up-front checks, without training.

    Returns the config; argparse errors exit with code 2 as usual, the checks raise UsageError.
    """
    if command == "pipeline":
        config = PipelineParser().parse_args(list(argv))
        validate_pipeline(config)
    else:
        config = stage_parser(command).parse_args(list(argv))
        validate(config)
    return config


def run_command(prog: str, main: Callable[[Optional[List[str]]], object], argv: Optional[List[str]] = None) -> int:
    """Run a recipe's ``main``; a UsageError, DataError or MissingDependency is ``prog: error: message``, exit 2."""
    setup_logging()
    try:
        main(argv)
    except (UsageError, DataError, MissingDependency) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
