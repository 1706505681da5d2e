"""Logging for the commands: the ``minichatgpt`` logger, rank-0 aware, and quiet third-party imports.

Library modules log through ``get_logger(__name__)`` and never configure logging themselves; the
commands call :func:`setup_logging` once, before models are loaded. It sends the project's messages to
standard output (rank 0 at ``--log_level``, other ranks warnings and errors only, tagged with their
rank) and silences what libraries the run does not use print when ``transformers`` imports them
because they are installed: torchao's CUDA kernels failing to load on a CPU machine, DeepSpeed
announcing that it found no GPU, torch's pytree deprecation notes. ``--log_level debug`` shows them.
"""

import logging
import os
import sys

ROOT = "minichatgpt"
LEVELS = ("debug", "info", "warning", "error")
# Third-party loggers whose import-time chatter concerns no minichatgpt run: quiet unless debugging.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "torch.distributed.elastic.multiprocessing.redirects")
DEEPSPEED_PROBE = "Setting accelerator to CPU"


def get_logger(name: str) -> logging.Logger:
    """The logger of a minichatgpt module (``get_logger(__name__)``)."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class _DropDeepSpeedProbe(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(DEEPSPEED_PROBE)


_PROBE_FILTER = _DropDeepSpeedProbe()


def setup_logging(level: str = "info") -> logging.Logger:
    """Configure the ``minichatgpt`` logger for a command run; safe to call again with a new level."""
    if level not in LEVELS:
        raise ValueError(f"--log_level must be one of {', '.join(LEVELS)}, got {level!r}")
    root = logging.getLogger(ROOT)
    rank = _rank()
    root.setLevel(getattr(logging, level.upper()) if rank == 0 else max(logging.WARNING, getattr(logging, level.upper())))
    if not any(getattr(h, "_minichatgpt", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler._minichatgpt = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    prefix = f"[rank {rank}] " if rank else ""
    for handler in root.handlers:
        if getattr(handler, "_minichatgpt", False):
            handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    quiet = level != "debug"
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.NOTSET)
    # DeepSpeed creates its logger (and handler) when imported, resetting the level: filter the record instead.
    deepspeed = logging.getLogger("DeepSpeed")
    (deepspeed.addFilter if quiet else deepspeed.removeFilter)(_PROBE_FILTER)
    return root
