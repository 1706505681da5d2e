"""Command logging: the project's messages on stdout, rank-0 aware, and no chatter from unused libraries."""

import logging
import os
import subprocess
import sys

import pytest

from minichatgpt.log import QUIET_LOGGERS, get_logger, setup_logging

NOISE = ("Failed to load", "_pytree", "Setting accelerator to CPU", "Traceback")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **env), check=True)


def test_rank0_logs_info_and_other_ranks_only_warnings():
    code = ("from minichatgpt.log import get_logger, setup_logging; setup_logging('info'); "
            "log = get_logger('minichatgpt.x'); log.info('hello'); log.warning('careful')")
    assert run_python(code, RANK="0").stdout.splitlines() == ["hello", "careful"]
    assert run_python(code, RANK="1").stdout.splitlines() == ["[rank 1] careful"]


def test_levels_and_quiet_loggers_follow_log_level():
    try:
        setup_logging("warning")
        assert logging.getLogger("minichatgpt").level == logging.WARNING
        assert all(logging.getLogger(name).level == logging.ERROR for name in QUIET_LOGGERS)
        setup_logging("debug")
        assert get_logger("trainer").getEffectiveLevel() == logging.DEBUG
        assert all(logging.getLogger(name).level == logging.NOTSET for name in QUIET_LOGGERS)
        with pytest.raises(ValueError, match="--log_level must be one of"):
            setup_logging("loud")
    finally:
        setup_logging("info")


@pytest.mark.slow
def test_a_plain_run_shows_only_what_concerns_it(tiny_model_dirs, tmp_path):
    """torchao, DeepSpeed and torch's pytree notes (transformers imports those libraries when they are
    installed) stay out of a run's output; the data report is in."""
    result = subprocess.run([sys.executable, "-m", "minichatgpt.cli", "rm", "--pretrain", tiny_model_dirs["gpt2"],
                             "--max_datasets_size", "16", "--batch_size", "8", "--max_len", "32", "--save_path",
                             str(tmp_path / "rm")], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert not [word for word in NOISE if word in output], output[:3000]
    assert "rm data: read 16 records from the built-in task; dropped none; using 16" in result.stdout
    assert (tmp_path / "rm" / "config.yaml").read_text().startswith("# Resolved configuration of `minichatgpt rm`")
