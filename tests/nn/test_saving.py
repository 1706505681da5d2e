"""Streamed saving (``nn.saving``): the same files as the merged-copy save it replaces, and the same bytes
as ``safetensors.torch.save_file``."""

import os

import pytest
import torch
from safetensors.torch import save_file

from minichatgpt.nn import Actor, Critic, merged_copy, rebuilt_copy
from minichatgpt.nn.saving import write_safetensors
from minichatgpt.trainer.strategies import NaiveStrategy
from minichatgpt.trainer.utils import save_pretrained

from ..conftest import tiny_config


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _train_adapters(model: torch.nn.Module) -> None:
    """Give the adapters non-zero values (lora_B starts at zero, which would hide a missing merge)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.1)


def test_writer_matches_safetensors_save_file(tmp_path):
    tensors = {"b.weight": torch.randn(3, 2), "a.bias": torch.randn(5).bfloat16(), "z": torch.arange(3),
               "c": torch.randn(2, 2).t(), "h": torch.randn(4).half(), "e": torch.zeros(0, 3)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "ref.safetensors", metadata={"format": "pt"})
    write_safetensors(tensors, str(tmp_path / "new.safetensors"), metadata={"format": "pt"})
    assert _read(tmp_path / "new.safetensors") == _read(tmp_path / "ref.safetensors")
    # cast on write: equal to casting first
    save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()},
              tmp_path / "ref32.safetensors")
    write_safetensors(tensors, str(tmp_path / "new32.safetensors"), dtype=torch.float32)
    assert _read(tmp_path / "new32.safetensors") == _read(tmp_path / "ref32.safetensors")


def _old_save(model, directory, dtype=None):
    """The save this replaces: merge adapters in a deep copy (after casting) and let transformers write it."""
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
        model = rebuilt_copy(model, state)
    merged_copy(model.model).save_pretrained(directory)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float32])
def test_actor_save_equals_merged_copy_save(tmp_path, dtype):
    torch.manual_seed(0)
    actor = Actor(config=tiny_config("llama"), lora_rank=4)
    _train_adapters(actor)
    if dtype == torch.float32:  # frozen base held in bf16, saved in float32 (the bf16 PPO run's case)
        actor.model.get_base_model().to(torch.bfloat16)
        for name, p in actor.model.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()
    _old_save(actor, str(tmp_path / "old"), dtype)
    before = {n: p.detach().clone() for n, p in actor.named_parameters()}
    saved = rebuilt_copy(actor, actor.state_dict()) if dtype is not None else actor
    state = {k: v.to(dtype) if dtype is not None and v.is_floating_point() and "lora_" in k else v
             for k, v in saved.state_dict().items()}
    (rebuilt_copy(actor, state) if dtype is not None else actor).save_pretrained(str(tmp_path / "new"), dtype=dtype)
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        assert _read(tmp_path / "new" / name) == _read(tmp_path / "old" / name), name
    assert all(torch.equal(p, before[n]) for n, p in actor.named_parameters())  # the live model is untouched


def test_bf16_strategy_save_writes_the_float32_merge(tmp_path):
    """A bf16 (master-weight) naive run saves the float32 masters merged into the float32 base, as before."""
    torch.manual_seed(0)
    critic = Critic(config=tiny_config("llama"), lora_rank=4)
    _train_adapters(critic)
    strategy = NaiveStrategy(precision="bf16")
    optim = torch.optim.Adam([p for p in critic.parameters() if p.requires_grad])
    critic, optim = strategy.prepare((critic, optim))
    save_pretrained(strategy, critic, str(tmp_path / "new"), dtype="fp32")
    state = {k: v.float() if v.is_floating_point() else v for k, v in strategy.full_state_dict(critic).items()}
    clone = rebuilt_copy(critic, state)
    clone.model = merged_copy(clone.model)  # the reference merge, in float32
    clone.save_pretrained(str(tmp_path / "old"))
    for name in ("model.safetensors", "config.json"):
        assert _read(tmp_path / "new" / name) == _read(tmp_path / "old" / name), name
    assert os.path.isdir(tmp_path / "new" / "adapter")
