"""Resumable training checkpoints: atomic, self-describing, verified on load.

A checkpoint is a directory ``{root}/checkpoint-{step}`` holding

- ``{name}.safetensors``: each trained model's trainable weights (LoRA adapters and heads only when the
  base is frozen), gathered from every rank when sharded;
- ``{name}_optim.pt`` (or ``{name}_optim.rank{r}.pt`` for sharded optimizers): optimizer state;
- ``trainer_state.rank{r}.pt``: the trainer's counters, scheduler, data position and each rank's RNG
  states (Python, NumPy, torch CPU and CUDA);
- ``manifest.json``: step, configuration, library version and the SHA-256 of every file.

It is written under ``checkpoint-{step}.tmp``, every file is fsynced, and the directory is renamed into
place only when complete, so a process killed mid-save leaves the previous checkpoint as the latest.
Every file is read with ``weights_only=True`` (no unpickling); every rank must see the same filesystem.
"""

import hashlib
import json
import os
import random
import re
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.optim import Optimizer

from .strategies import Strategy
from .strategies.utils import load_object, save_object, save_state_dict

MANIFEST = "manifest.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")

# name -> (prepared model, its optimizer)
TrainedModels = Dict[str, Tuple[nn.Module, Optimizer]]


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or fails its hash check."""


class NonFiniteError(RuntimeError):
    """Training produced non-finite losses, gradients or weights."""


def library_version() -> str:
    from .. import __version__

    return __version__


# ----------------------------------------------------------------------------------------------
# RNG state
# ----------------------------------------------------------------------------------------------
def capture_rng_state() -> Dict[str, Any]:
    """This process's random number generator states, in a form ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------
def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_step(path: str) -> Optional[int]:
    match = _NAME.match(os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else None


def verify_checkpoint(path: str) -> Dict[str, Any]:
    """The manifest of a complete checkpoint whose files all match their hashes; else ``CheckpointError``."""
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise CheckpointError(f"checkpoint {path!r} has no {MANIFEST} (incomplete or not a checkpoint)")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        files = manifest["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path!r}: unreadable {MANIFEST}: {e}") from e
    for name, expected in files.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise CheckpointError(f"checkpoint {path!r} is missing {name}")
        if _sha256(file) != expected:
            raise CheckpointError(f"checkpoint {path!r}: {name} fails its SHA-256 check (corrupted or truncated)")
    return manifest


def _safetensors_keys(path: str) -> set:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return set(f.keys())


def trainable_names(module: nn.Module) -> List[str]:
    return [name for name, p in module.named_parameters() if p.requires_grad]


def all_finite(strategy: Strategy, model: nn.Module) -> bool:
    """Whether every trainable weight (this rank's shards, then all ranks agreeing) is finite."""
    local = all(bool(torch.isfinite(_local(p)).all()) for p in strategy.unwrap_model(model).parameters()
                if p.requires_grad)
    flag = torch.tensor(0.0 if local else 1.0, device=strategy.device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag)
    return float(flag) == 0.0


def _local(p: torch.Tensor) -> torch.Tensor:
    if hasattr(p, "ds_tensor"):  # ZeRO-3: this rank's partition
        return p.ds_tensor
    return p.to_local() if hasattr(p, "to_local") else p


# ----------------------------------------------------------------------------------------------
# the manager
# ----------------------------------------------------------------------------------------------
class CheckpointManager:
    """Writes, lists, prunes and loads the checkpoints under ``root``.

    Args:
        root: directory of ``checkpoint-{step}`` subdirectories.
        strategy: gathers sharded weights and writes per-rank optimizer files.
        save_total_limit: keep at most this many checkpoints (oldest removed first); None keeps all.
        config: JSON-able run configuration recorded in every manifest.
    """

    def __init__(self, root: str, strategy: Strategy, save_total_limit: Optional[int] = None,
                 config: Optional[Dict[str, Any]] = None):
        if save_total_limit is not None and save_total_limit < 1:
            raise ValueError(f"save_total_limit must be >= 1, got {save_total_limit}")
        self.root, self.strategy = root, strategy
        self.save_total_limit, self.config = save_total_limit, config or {}
        self.last_save_seconds = self.last_load_seconds = 0.0
        self._verified: Dict[str, Dict[str, Any]] = {}

    # -- listing ---------------------------------------------------------------------------------
    def checkpoints(self) -> List[str]:
        """Complete (renamed) checkpoint directories, newest first."""
        if not os.path.isdir(self.root):
            return []
        found = [(checkpoint_step(name), os.path.join(self.root, name)) for name in os.listdir(self.root)]
        return [path for step, path in sorted((s, p) for s, p in found if s is not None)[::-1]]

    def latest(self) -> Optional[str]:
        """The newest checkpoint that passes verification; damaged ones are reported and skipped."""
        for path in self.checkpoints():
            try:
                self._verified[path] = verify_checkpoint(path)
                return path
            except CheckpointError as e:
                self.strategy.print(f"warning: {e}; falling back to the previous checkpoint")
        return None

    # -- saving ----------------------------------------------------------------------------------
    def save(self, step: int, models: TrainedModels, trainer_state: Dict[str, Any]) -> str:
        """Write checkpoint ``step`` (a collective: every rank calls it) and prune old ones."""
        strategy, start = self.strategy, time.perf_counter()
        for name, (model, _) in models.items():
            if not all_finite(strategy, model):
                raise NonFiniteError(f"refusing to write checkpoint {step}: {name} has non-finite weights")
        final = os.path.join(self.root, f"checkpoint-{step}")
        tmp = final + ".tmp"
        if strategy.is_rank0():
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        strategy.barrier()
        for name, (model, optim) in models.items():
            state = strategy.full_state_dict(model)  # collective; complete on rank 0
            if strategy.is_rank0():
                keep = set(trainable_names(strategy.unwrap_model(model)))
                save_state_dict({k: v for k, v in state.items() if k in keep}, os.path.join(tmp, f"{name}.safetensors"))
            del state
            if optim is not None:
                strategy.save_optimizer(optim, os.path.join(tmp, f"{name}_optim.pt"),
                                        only_rank0=not strategy.shards_optimizer)
        save_object({**trainer_state, "rng": capture_rng_state()},
                    os.path.join(tmp, f"trainer_state.rank{strategy.rank}.pt"))
        strategy.barrier()
        if strategy.is_rank0():
            self._seal(tmp, final, step)
            self._prune()
        strategy.barrier()
        self.last_save_seconds = time.perf_counter() - start
        return final

    def _seal(self, tmp: str, final: str, step: int) -> None:
        files = {}
        for name in sorted(os.listdir(tmp)):
            path = os.path.join(tmp, name)
            if os.path.isfile(path):
                _fsync(path)
                files[name] = _sha256(path)
        manifest = {"step": step, "library_version": library_version(), "torch_version": torch.__version__,
                    "world_size": self.strategy.world_size, "strategy": type(self.strategy).__name__,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": self.config, "files": files}
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        if os.path.isdir(final):  # a checkpoint of the same step from an earlier, interrupted run
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(self.root)

    def _prune(self) -> None:
        for name in os.listdir(self.root):  # leftovers of saves that were killed
            if name.endswith(".tmp") and checkpoint_step(name[:-4]) is not None:
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
        if self.save_total_limit is not None:
            for path in self.checkpoints()[self.save_total_limit:]:
                shutil.rmtree(path, ignore_errors=True)

    # -- loading ---------------------------------------------------------------------------------
    def load(self, path: str, models: TrainedModels) -> Dict[str, Any]:
        """Restore models, optimizers and this rank's RNG from ``path``; returns the trainer state."""
        strategy, start = self.strategy, time.perf_counter()
        manifest = self._verified.pop(path, None) or verify_checkpoint(path)
        if manifest.get("world_size", strategy.world_size) != strategy.world_size:
            raise CheckpointError(f"checkpoint {path!r} was written by {manifest['world_size']} processes; "
                                  f"resume it with the same number (now {strategy.world_size})")
        for name, (model, optim) in models.items():
            file = os.path.join(path, f"{name}.safetensors")
            expected = set(trainable_names(strategy.unwrap_model(model)))
            saved = _safetensors_keys(file) if strategy.is_rank0() else expected
            if saved != expected:
                missing, unexpected = sorted(expected - saved)[:3], sorted(saved - expected)[:3]
                raise CheckpointError(f"checkpoint {file!r} does not match the {name}'s trainable weights "
                                      f"(missing {missing}, unexpected {unexpected}): was it written with "
                                      "other --lora_rank or model settings?")
            strategy.load_model(model, file, strict=False)
            if optim is not None:
                strategy.load_optimizer(optim, os.path.join(path, f"{name}_optim.pt"))
        state = load_object(os.path.join(path, f"trainer_state.rank{strategy.rank}.pt"))
        restore_rng_state(state.pop("rng"))
        strategy.barrier()
        self.last_load_seconds = time.perf_counter() - start
        return state


def resolve_resume(resume: Optional[str], checkpoint_root: Optional[str], manager: CheckpointManager) -> Optional[str]:
    """The checkpoint directory ``--resume`` points at.

    ``auto`` is the newest valid checkpoint under ``checkpoint_root`` (None when there is none yet, so
    the same command starts or continues a run); a ``checkpoint-{step}`` directory is that checkpoint;
    any other directory is searched for its newest valid checkpoint.
    """
    if not resume:
        return None
    if resume == "auto":
        if checkpoint_root is None:
            raise ValueError("--resume auto needs --save_path (checkpoints live in SAVE_PATH/checkpoints)")
        return manager.latest()
    if not os.path.isdir(resume):
        raise FileNotFoundError(f"--resume {resume!r} is not a directory")
    if checkpoint_step(resume) is not None:
        verify_checkpoint(resume)
        return resume
    found = CheckpointManager(resume, manager.strategy).latest()
    if found is None:
        raise CheckpointError(f"--resume {resume!r} holds no valid checkpoint-<step> directory")
    return found
