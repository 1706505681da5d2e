"""The ``chat``/``serve`` subcommands and the one-shot example script, run in-process."""

import argparse
import io
import os
import runpy

import pytest

import minichatgpt
from minichatgpt.nn import load_model, load_tokenizer
from minichatgpt.serving import cli
from minichatgpt.serving.engine import GenerationOptions, encode_chat, generate_text

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(minichatgpt.__file__))),
                       "examples", "inference.py")


def test_register_adds_chat_and_serve():
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    chat = parser.parse_args(["chat", "--model", "m", "--quant", "4bit", "--temperature", "0", "--top_p", "0.9",
                              "--max_new_tokens", "7", "--lora", "a"])
    assert chat.func is cli.run_chat_command
    assert (chat.model, chat.quant, chat.temperature, chat.top_p, chat.max_new_tokens, chat.lora) == \
        ("m", "4bit", 0.0, 0.9, 7, "a")
    serve = parser.parse_args(["serve", "--model", "m"])
    assert serve.func is cli.run_serve_command and (serve.host, serve.port) == ("127.0.0.1", 8000)
    with pytest.raises(SystemExit):
        parser.parse_args(["chat", "--model", "m", "--quant", "3bit"])


def _greedy_reply(model_dir, question, n):
    model, tokenizer = load_model(model_dir).eval(), load_tokenizer(model_dir)
    ids = encode_chat(tokenizer, [{"role": "user", "content": question}])
    return generate_text(model, tokenizer, ids, GenerationOptions(max_new_tokens=n, temperature=0.0))[0].strip()


def test_chat_command_reads_stdin_until_exit(chat_model_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("describe the cat\n/exit\n"))
    cli.main(["chat", "--model", chat_model_dir, "--device", "cpu", "--temperature", "0", "--max_new_tokens", "5"])
    out = capsys.readouterr().out
    assert f"Assistant: {_greedy_reply(chat_model_dir, 'describe the cat', 5)}\n" in out


def test_bad_sampling_option_is_refused_before_loading(monkeypatch):
    with pytest.raises(SystemExit, match="top_p"):
        cli.main(["chat", "--model", "/does/not/exist", "--top_p", "0"])


@pytest.mark.parametrize("quant", [None, "8bit"])
def test_example_script_generates(chat_model_dir, monkeypatch, capsys, quant):
    if quant:
        pytest.importorskip("torchao", reason="torchao (CPU quantization) is not installed")
    argv = [EXAMPLE, "--model", chat_model_dir, "--prompt", "describe the cat", "--max_new_tokens", "5",
            "--device", "cpu"] + (["--quant", quant] if quant else [])
    monkeypatch.setattr("sys.argv", argv)
    runpy.run_path(EXAMPLE, run_name="__main__")
    captured = capsys.readouterr()
    assert "model memory" in captured.err and "finish_reason" in captured.err
    if quant is None:  # quantized weights may pick other tokens: only full precision has an expected reply
        assert captured.out.strip() == _greedy_reply(chat_model_dir, "describe the cat", 5)
