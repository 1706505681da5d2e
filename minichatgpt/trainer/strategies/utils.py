"""Helpers shared by strategy classes: checkpoint files, seeding, per-rank paths, process groups,
distributed data loaders and the ``prepare`` argument structure."""

import atexit
import os
import pickle
import random
import socket
from datetime import timedelta
from typing import Any, Callable, Dict, Iterable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_path(path: str, rank: int) -> str:
    """``optim.pt`` -> ``optim.rank0.pt``: the per-rank file of a sharded optimizer checkpoint."""
    root, ext = os.path.splitext(path)
    return f"{root}.rank{rank}{ext}"


def _tmp_path(path: str) -> str:
    # Unique per process: several ranks (or nodes on a shared filesystem) may write the same file.
    return f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"


def save_state_dict(state_dict: Dict[str, torch.Tensor], path: str) -> None:
    """Write a model state dict: safetensors for ``*.safetensors``, otherwise ``torch.save``.

    The file is written to a temporary name next to ``path`` and renamed, so an interrupted save never leaves a
    truncated checkpoint under the real name.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _tmp_path(path)
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
    return safe_torch_load(path)


def save_object(obj, path: str) -> None:
    """``torch.save`` through a temporary file (optimizer states and other nested containers)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _tmp_path(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_object(path: str, safe_globals: Iterable[type] = ()):
    """Read a file written by ``save_object``; ``safe_globals`` lists extra classes the file may hold."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    with torch.serialization.safe_globals(list(safe_globals)):
        return safe_torch_load(path)


def safe_torch_load(path: str):
    """``torch.load(weights_only=True)`` onto the CPU. A file holding other Python objects (which unpickling
    could run as code) is refused, and a truncated or foreign file reported, naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = " ".join(str(err).split("WeightsUnpickler error:")[-1].split("Check the documentation")[0].split())
        raise pickle.UnpicklingError(
            f"{path}: refused to load: not a weights-only checkpoint ({detail.split('. Please')[0][:200]}), and "
            "unpickling other Python objects could run arbitrary code. Load only checkpoints written by "
            "strategy.save_model / save_optimizer, or .safetensors files") from err
    except (EOFError, KeyError, RuntimeError) as err:  # torch.load's answers to truncated or foreign bytes
        raise pickle.UnpicklingError(f"{path}: not a readable PyTorch checkpoint (truncated, or another format): "
                                     f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK`` set by torchrun; 0 when run plainly)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def default_backend(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(backend: str, timeout_s: float) -> None:
    """Join the process group described by torchrun's environment variables.

    Under ``torchrun`` the variables ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` are set.
    A plain ``python script.py`` has none of them; it then becomes a group of one on a free local port,
    so the same script runs with and without torchrun. ``timeout_s`` bounds every collective, so a rank
    that dies makes the others fail instead of waiting forever.
    """
    if dist.is_initialized():
        return
    # Leave the group before the interpreter tears down: a gloo group destroyed during finalization could
    # abort a rank that had finished its work ("terminate called without an active exception").
    atexit.register(leave_process_group)
    timeout = timedelta(seconds=timeout_s)
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                                timeout=timeout)
        return
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"distributed launch is missing environment variables {missing}; start the script "
                           "with `torchrun --nproc_per_node N script.py` (see docs/distributed.md)")
    dist.init_process_group(backend, timeout=timeout)


def leave_process_group() -> None:
    """Destroy this process's default group, if it is still joined (registered with ``atexit``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def join_process_group(device: torch.device, backend: Optional[str], timeout_s: float) -> str:
    """Select this rank's CUDA device (if any) and join the process group; returns the backend used."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = backend or default_backend(device)
    init_process_group(backend, timeout_s)
    return backend


def prepare_models(models: tuple, prepare_trained: Callable[[nn.Module, Optimizer], tuple],
                   prepare_frozen: Callable[[nn.Module], Any]) -> Any:
    """Apply a backend's wrappers to ``prepare``'s arguments, keeping their structure.

    ``(model, optim)`` pairs go through ``prepare_trained`` (which returns a new pair), bare modules through
    ``prepare_frozen``, ``None`` passes through; a single argument comes back unpacked.
    """
    prepared = []
    for item in models:
        if isinstance(item, tuple):
            if len(item) != 2:
                raise ValueError(f"prepare expects (model, optimizer) pairs, got a tuple of {len(item)}")
            prepared.append(tuple(prepare_trained(*item)))
        elif item is None:
            prepared.append(None)
        elif isinstance(item, nn.Module):
            prepared.append(prepare_frozen(item))
        else:
            raise TypeError(f"prepare expects modules, (module, optimizer) pairs or None, got {type(item).__name__}")
    return prepared[0] if len(prepared) == 1 else prepared


class EpochSampler(torch.utils.data.Sampler):
    """Indices ``0..n-1``, shuffled by ``(seed, epoch)`` alone (like ``DistributedSampler`` on one process).

    The order of an epoch does not depend on how many epochs were iterated before, so a resumed run
    that calls ``set_epoch(e)`` sees exactly the batches the interrupted one would have seen.
    """

    def __init__(self, data_source, shuffle: bool = True, seed: int = 42):
        self.n, self.shuffle, self.seed, self.epoch = len(data_source), shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist())

    def __len__(self) -> int:
        return self.n


def distributed_dataloader(dataset: Dataset, batch_size: int, shuffle: bool, collate_fn: Optional[Callable],
                           drop_last: bool, pin_memory: bool, seed: int) -> DataLoader:
    """A loader whose ``DistributedSampler`` gives each rank a disjoint ``1 / world_size`` of ``dataset``.

    ``batch_size`` is per rank. Call ``loader.sampler.set_epoch(epoch)`` to reshuffle between epochs.
    """
    sampler = DistributedSampler(dataset, num_replicas=dist.get_world_size(), rank=dist.get_rank(),
                                 shuffle=shuffle, seed=seed, drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                      drop_last=drop_last, pin_memory=pin_memory)


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (before sharding, so shards agree)."""
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src)


def check_sharded_save(only_rank0: bool, strategy_name: str) -> None:
    """Sharded optimizers are saved one file per rank; ``only_rank0=True`` would silently drop shards."""
    if only_rank0:
        raise ValueError(f"{strategy_name} shards optimizer state across ranks: save it with only_rank0=False "
                         "(every rank writes its own file, see rank_path), not only_rank0=True")


def should_write(only_rank0: bool) -> bool:
    """Whether this rank writes a replicated file: global rank 0, or with ``only_rank0=False`` each node's
    local rank 0 (for clusters whose nodes do not share a filesystem)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank == 0 if only_rank0 else local_rank() == 0


def fill_grad_norm(norm: torch.Tensor, value: Optional[float]) -> None:
    """Write a backend's measured gradient norm into the tensor ``clip_grad_norm`` returned earlier."""
    norm.fill_(float("nan") if value is None else float(value))
