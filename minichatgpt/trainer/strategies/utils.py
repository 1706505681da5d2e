"""Helpers shared by strategy classes: checkpoint files, seeding, per-rank paths."""

import os
import random
from typing import Dict

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_path(path: str, rank: int) -> str:
    """``optim.pt`` -> ``optim.rank0.pt``: the per-rank file of a sharded optimizer checkpoint."""
    root, ext = os.path.splitext(path)
    return f"{root}.rank{rank}{ext}"


def save_state_dict(state_dict: Dict[str, torch.Tensor], path: str) -> None:
    """Write a model state dict: safetensors for ``*.safetensors``, otherwise ``torch.save``.

    The file is written to ``path + '.tmp'`` and renamed, so an interrupted save never leaves a
    truncated checkpoint under the real name.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    state_dict = {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.detach().cpu()
                  for k, v in state_dict.items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        # Tied weights (e.g. GPT-2 embeddings) share storage; safetensors needs distinct tensors.
        save_file({k: v.clone() for k, v in state_dict.items()}, tmp)
    else:
        torch.save(state_dict, tmp)
    os.replace(tmp, path)


def load_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read a file written by ``save_state_dict`` onto the CPU (never unpickling arbitrary code)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def save_object(obj, path: str) -> None:
    """``torch.save`` through a temporary file (optimizer states and other nested containers)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_object(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)
