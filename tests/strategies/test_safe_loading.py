"""Checkpoints load without unpickling code: weights-only ``torch.load`` or safetensors, and a refused
file is named in the error."""

import os
import pickle
import re

import pytest
import torch

from minichatgpt.trainer.strategies import NaiveStrategy
from minichatgpt.trainer.strategies.utils import load_object, load_state_dict

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "minichatgpt")


class Payload:
    """Unpickling this creates a directory: the proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_every_torch_load_in_the_package_is_weights_only():
    calls = []
    for root, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                with open(os.path.join(root, name)) as f:
                    calls += [(name, line) for line in f if re.search(r"\btorch\.load\(", line)]
    assert calls and all("weights_only=True" in line for _, line in calls), calls


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_model_checkpoint_round_trip(tmp_path, suffix):
    strategy = NaiveStrategy(device="cpu")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model[1].weight = model[0].weight  # tied, as GPT-2's embeddings: safetensors needs them stored apart
    path = str(tmp_path / f"model{suffix}")
    strategy.save_model(model, path)
    other = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    strategy.load_model(other, path)
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_pickle_with_code_is_refused_naming_the_file(tmp_path):
    marker = str(tmp_path / "code-ran")
    path = str(tmp_path / "evil.pt")
    torch.save({"weight": torch.zeros(2), "extra": Payload(marker)}, path)
    strategy = NaiveStrategy(device="cpu")
    for load in (load_state_dict, load_object, lambda p: strategy.load_model(torch.nn.Linear(1, 2), p)):
        with pytest.raises(pickle.UnpicklingError, match=rf"^{re.escape(path)}: refused to load: not a weights-only"):
            load(path)
    assert not os.path.exists(marker)


def test_truncated_and_foreign_files_name_the_file(tmp_path):
    good = str(tmp_path / "good.pt")
    torch.save({"weight": torch.zeros(8)}, good)
    truncated = tmp_path / "truncated.pt"
    with open(good, "rb") as f:
        truncated.write_bytes(f.read()[:64])
    foreign = tmp_path / "notes.pt"
    foreign.write_bytes(b"hello, not a checkpoint")
    for path in (truncated, foreign):
        with pytest.raises(pickle.UnpicklingError, match=rf"^{re.escape(str(path))}: not a readable PyTorch"):
            load_state_dict(str(path))
