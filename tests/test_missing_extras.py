"""A command whose optional extra is missing stops with one line naming the extra, and exit code 2.

A ``None`` entry in ``sys.modules`` makes ``import name`` fail as if the package were not installed (and
``importlib.util.find_spec`` report it absent), so each case blocks one package and runs the command.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from minichatgpt.cli import main
from minichatgpt.extras import MissingDependency, install_hint, require

ROOT = Path(__file__).resolve().parents[1]


def run_without(monkeypatch, capsys, blocked, argv):
    """(exit code, stderr lines) of ``minichatgpt *argv`` with the packages ``blocked`` uninstalled."""
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def test_require_names_the_extra_and_every_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(MissingDependency) as error:
        require(("fastapi", "uvicorn", "torch"), "serve", "the HTTP server")
    assert str(error.value) == 'the HTTP server needs fastapi, uvicorn, which are not installed: ' \
                               'pip install "minichatgpt[serve]"'
    assert isinstance(error.value, ImportError)
    require(("torch", "json"), "serve", "anything")  # installed: no error


def test_serve_without_fastapi(monkeypatch, capsys, tmp_path):
    code, err = run_without(monkeypatch, capsys, ["fastapi"], ["serve", "--model", str(tmp_path)])
    assert code == 2
    assert err == ['minichatgpt serve: error: the HTTP server needs fastapi, which is not installed: '
                   f'{install_hint("serve")}']


def test_tensorboard_dir_without_tensorboard(monkeypatch, capsys, tmp_path):
    code, err = run_without(monkeypatch, capsys, ["tensorboard"],
                            ["sft", "--tensorboard_dir", str(tmp_path / "tb"), "--max_datasets_size", "4"])
    assert code == 2
    assert err == ['minichatgpt sft: error: --tensorboard_dir needs tensorboard, which is not installed: '
                   'pip install "minichatgpt[tensorboard]"']


def test_gguf_model_without_gguf(monkeypatch, capsys, tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    code, err = run_without(monkeypatch, capsys, ["gguf"], ["sft", "--pretrain", str(model)])
    assert code == 2
    assert len(err) == 1 and err[0].endswith('needs gguf, which is not installed: pip install "minichatgpt[gguf]"')


def test_deepspeed_strategy_without_deepspeed(monkeypatch, capsys):
    code, err = run_without(monkeypatch, capsys, ["deepspeed"], ["sft", "--strategy", "deepspeed_zero2"])
    assert code == 2
    assert len(err) == 1 and "minichatgpt[deepspeed]" in err[0] and "--no-build-isolation" in err[0]


def test_colossalai_strategy_without_colossalai(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # past the CUDA check, to the package one
    code, err = run_without(monkeypatch, capsys, ["colossalai"], ["sft", "--strategy", "colossalai_zero2"])
    assert code == 2
    assert len(err) == 1 and ".[colossalai]" in err[0]


def test_cpu_quantization_without_torchao(monkeypatch, capsys, tiny_model_dirs):
    code, err = run_without(monkeypatch, capsys, ["torchao"],
                            ["chat", "--model", tiny_model_dirs["gpt2"], "--quant", "8bit", "--device", "cpu"])
    assert code == 2
    assert err[-1] == ('minichatgpt chat: error: 8bit quantization with torchao needs torchao, which is not '
                       'installed: pip install "minichatgpt[quant]"')


def test_bitsandbytes_quantization_without_bitsandbytes(monkeypatch):
    from minichatgpt.serving.quant import quantize_model

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(MissingDependency, match=r'pip install "minichatgpt\[cuda\]"'):
        quantize_model(nn.Sequential(nn.Linear(4, 4)), "8bit", "cpu", backend="bitsandbytes")


def test_fsdp_on_a_torch_without_fully_shard(monkeypatch):
    from minichatgpt.trainer.strategies import FSDPStrategy

    monkeypatch.delattr(torch.distributed.fsdp, "fully_shard")
    with pytest.raises(MissingDependency, match=r"torch>=2\.6"):
        FSDPStrategy()


def test_the_package_imports_on_a_torch_without_fully_shard():
    """torch < 2.6 (the ColossalAI environment) has no public ``fully_shard``: importing must not need it."""
    # transformers reaches FSDP2 through torch's private path, which itself imports the public name: load
    # that first, then take the public name away.
    code = ("import torch.distributed._composable.fsdp, torch.distributed.fsdp as fsdp; del fsdp.fully_shard\n"
            "import minichatgpt.trainer.strategies, minichatgpt.recipes.sft, minichatgpt.cli\n"
            "from minichatgpt.trainer.strategies import build_strategy; build_strategy('naive')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
