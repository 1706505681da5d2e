"""``chat``/``serve`` configs: flags from the dataclasses, ``--config`` YAML under the flags, checks naming the flag."""

import pytest

from minichatgpt import cli as main_cli
from minichatgpt.config import ConfigParser, UsageError
from minichatgpt.serving import cli


def test_yaml_config_under_flags_and_written_back(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("model: outputs/ppo\nport: 9001\napi_key: secret\nmax_queue: 3\nmax_batch: 5\n")
    config = ConfigParser(cli.ServeConfig).parse_args(["--config", str(path), "--port", "9002"])
    assert (config.model, config.port, config.api_key, config.max_queue, config.max_batch, config.host) == (
        "outputs/ppo", 9002, "secret", 3, 5, "127.0.0.1")
    assert cli.as_config("serve", config) is config


@pytest.mark.parametrize("command, argv, message", [
    ("serve", ["--model", "m", "--port", "70000"], "--port must be a port number in [0, 65535], got 70000"),
    ("chat", ["--model", "m", "--temperature=-1"], "--temperature must be a finite number >= 0"),
    ("serve", [], "--model is required"),
    ("serve", ["--model", "m", "--max_batch", "0"], "--max_batch must be"),
])
def test_bad_values_are_one_line_and_exit_2(capsys, command, argv, message):
    assert main_cli.main([command] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"minichatgpt {command}: error: ") and message in err and "Traceback" not in err


def test_register_namespace_is_checked_like_a_config():
    import argparse

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    with pytest.raises(UsageError, match="--top_p must be"):
        cli.as_config("chat", parser.parse_args(["chat", "--model", "m", "--top_p", "2"]))
