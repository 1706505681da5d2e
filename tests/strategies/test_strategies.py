"""Distributed strategies against NaiveStrategy: 2 CPU ranks under torchrun (gloo), a tiny GPT-2 actor.

Each strategy runs ``strategy_worker.py`` once (module-scoped, shared by the tests that read its files);
the references are computed here, in-process, by the same functions with ``NaiveStrategy`` and the whole
global batch. Per-rank batch b on 2 ranks must equal naive with 2b: the loss is a mean over equal parts.
"""

import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
from packaging.version import Version
from torch.testing import assert_close

from minichatgpt.trainer.strategies import (STRATEGY_NAMES, ColossalAIStrategy, DDPStrategy, DeepSpeedStrategy,
                                            FSDPStrategy, NaiveStrategy, build_strategy)
from minichatgpt.trainer.strategies.deepspeed import MIN_VERSION
from minichatgpt.trainer.strategies.utils import load_state_dict, rank_path
from strategies import strategy_worker as worker

WORKER = worker.__file__
ROOT = Path(worker.ROOT)
TIMEOUT_S = 240  # one torchrun launch; a hang fails the test instead of blocking the suite

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(2 * TIMEOUT_S)]


def _deepspeed_usable() -> bool:
    if importlib.util.find_spec("deepspeed") is None:
        return False
    return Version(importlib.metadata.version("deepspeed")) >= Version(MIN_VERSION)


needs_deepspeed = pytest.mark.skipif(not _deepspeed_usable(),
                                     reason=f"deepspeed>={MIN_VERSION} is not installed (pip install -e .[deepspeed])")

# name -> (strategy, options, scenarios): one torchrun launch each.
RUNS = {
    "ddp": ("ddp", {}, "data,step,memory,generate,accum,resume"),
    "fsdp": ("fsdp", {}, "step,memory,generate,accum,resume"),
    "fsdp_offload_bf16": ("fsdp", {"cpu_offload": True, "param_dtype": "bf16", "reduce_dtype": "fp32"}, "step,resume"),
    "deepspeed_zero2": ("deepspeed_zero2", {}, "step,accum,resume"),
    # Persistence threshold 0: tiny parameters would otherwise stay whole on every rank.
    "deepspeed_zero3": ("deepspeed_zero3", {"config": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}},
                        "step,memory,generate,accum,resume"),
}
DS_RUNS = {"deepspeed_zero2", "deepspeed_zero3"}


def _env() -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _communicate(procs: List[subprocess.Popen], timeout: float) -> List[Tuple[int, str]]:
    """Wait for every process; on timeout kill each one's process group (they were started in new sessions)."""
    deadline, results = time.monotonic() + timeout, []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            pytest.fail(f"torchrun did not finish in {timeout}s:\n{out[-4000:]}")
        results.append((proc.returncode, out))
    return results


def _torchrun_args(strategy: str, options: dict, scenarios: str, init: Path, out: Path) -> List[str]:
    return [WORKER, "--strategy", strategy, "--options", json.dumps(options), "--scenarios", scenarios,
            "--init", str(init), "--out", str(out)]


def launch(launcher: List[str], args: List[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, *args]
    return subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Initial weights (written for the workers) and everything NaiveStrategy computes from them."""
    out = tmp_path_factory.mktemp("naive")
    naive = NaiveStrategy("cpu")
    init = out / "init.pt"
    naive.save_model(worker.make_actor(naive), str(init))

    def state(actor) -> Dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in actor.state_dict().items()}

    refs = {"init": init}
    actor, optim = worker.prepared_actor(naive, str(init))
    refs["step_norm"] = worker.train_step(naive, actor, optim, step=0)
    refs["step"] = state(actor)
    refs["generate"] = {n: worker.greedy(naive, actor, n).tolist() for n in (3, 5)}
    actor, optim = worker.prepared_actor(naive, str(init))
    refs["accum_norm"] = worker.train_step(naive, actor, optim, step=0, micro_batches=2)
    refs["accum"] = state(actor)
    actor, optim = worker.prepared_actor(naive, str(init))
    worker.train_step(naive, actor, optim, step=0)
    worker.train_step(naive, actor, optim, step=1)
    refs["resume"] = state(actor)
    return refs


@pytest.fixture(scope="module")
def run(reference, tmp_path_factory):
    """``run(name)``: the output folder of that entry of RUNS, launching torchrun on first use."""
    done = {}

    def get(name: str) -> Path:
        if name not in done:
            strategy, options, scenarios = RUNS[name]
            out = tmp_path_factory.mktemp(name)
            proc = launch(["--standalone", "--nproc_per_node=2"],
                          _torchrun_args(strategy, options, scenarios, reference["init"], out))
            [(code, log)] = _communicate([proc], TIMEOUT_S)
            assert code == 0, f"torchrun {name} failed:\n{log[-6000:]}"
            done[name] = out
        return done[name]

    return get


def results(out: Path, rank: int) -> dict:
    return json.loads((out / f"results.rank{rank}.json").read_text())


def assert_same_state(actual: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor], **tolerance) -> None:
    assert list(actual) == list(expected)
    for key in expected:
        assert_close(actual[key], expected[key], msg=lambda m, key=key: f"{key}: {m}", **tolerance)


def tensors(obj, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Every tensor in a nested optimizer state, by path."""
    if torch.is_tensor(obj):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {path: t for key, value in items for path, t in tensors(value, f"{prefix}/{key}").items()}


def needs(name: str):
    return [needs_deepspeed] if name in DS_RUNS else []


def params(names):
    return [pytest.param(n, marks=needs(n)) for n in names]


# Float tolerance after one AdamW step: ranks sum gradients in another order than one process.
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", params(["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"]))
def test_one_step_equals_naive_with_the_global_batch(name, run, reference):
    out = run(name)
    assert_same_state(load_state_dict(str(out / "step.pt")), reference["step"], **TOL)
    for rank in (0, 1):
        assert results(out, rank)["step_norm"] == pytest.approx(reference["step_norm"], rel=1e-5)


@pytest.mark.parametrize("name", params(["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"]))
def test_gradient_accumulation_equals_one_big_batch(name, run, reference):
    out = run(name)  # 2 micro-batches of 2 rows on each of 2 ranks vs 8 rows at once
    assert_same_state(load_state_dict(str(out / "accum.pt")), reference["accum"], **TOL)
    assert results(out, 0)["accum_norm"] == pytest.approx(reference["accum_norm"], rel=1e-5)


@pytest.mark.parametrize("name", params(["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"]))
def test_saved_model_is_the_full_model_and_loads_into_naive(name, run, reference):
    path = str(run(name) / "step.pt")
    saved = load_state_dict(path)
    naive = NaiveStrategy("cpu")
    actor = worker.make_actor(naive)
    naive.load_model(actor, path, strict=True)
    assert list(saved) == list(actor.state_dict())
    assert_same_state(actor.state_dict(), saved, rtol=0, atol=0)
    assert all(v.dtype == torch.float32 for v in saved.values() if v.is_floating_point())


@pytest.mark.parametrize("name", params(["ddp", "fsdp", "fsdp_offload_bf16", "deepspeed_zero2", "deepspeed_zero3"]))
def test_resumed_step_equals_uninterrupted_step(name, run, reference):
    out = run(name)
    resumed = load_state_dict(str(out / "resume_resumed.pt"))
    assert_same_state(resumed, load_state_dict(str(out / "resume_uninterrupted.pt")), rtol=1e-6, atol=1e-7)
    if name != "fsdp_offload_bf16":  # bf16 compute is compared with naive only loosely below
        assert_same_state(resumed, reference["resume"], **TOL)


def test_mixed_precision_offload_step_is_close_to_naive(run, reference):
    out = run("fsdp_offload_bf16")  # bf16 forward/backward, fp32 shards and reduction, CPU offload
    init, step = load_state_dict(str(reference["init"])), load_state_dict(str(out / "step.pt"))
    # bf16 keeps ~3 significant digits, and Adam turns small gradient errors into whole-lr changes for
    # near-zero gradients, so compare the update as a whole: ||d_bf16 - d_fp32|| / ||d_fp32|| small.
    error = sum((step[k] - reference["step"][k]).pow(2).sum() for k in init)
    size = sum((reference["step"][k] - init[k]).pow(2).sum() for k in init)
    assert (error / size).sqrt() < 0.1


@pytest.mark.parametrize("name", params(["fsdp", "deepspeed_zero2", "deepspeed_zero3"]))
def test_sharded_optimizer_state_round_trips_per_rank(name, run):
    out = run(name)
    for rank in (0, 1):
        saved = torch.load(rank_path(str(out / "optim1.pt"), rank), weights_only=False)
        reloaded = torch.load(rank_path(str(out / "optim1_reloaded.pt"), rank), weights_only=False)
        saved, reloaded = tensors(saved), tensors(reloaded)
        assert saved and list(saved) == list(reloaded)
        for path in saved:
            assert torch.equal(saved[path], reloaded[path]), path
    assert not (out / "optim1.pt").exists()  # one file per rank, never a partial single file


@pytest.mark.parametrize("name", params(["fsdp", "deepspeed_zero2", "deepspeed_zero3"]))
def test_only_rank0_optimizer_save_is_an_error_when_sharded(name, run):
    out = run(name)
    for rank in (0, 1):
        assert "only_rank0=False" in results(out, rank)["only_rank0_error"]
    assert not list(out.glob("never*"))


def test_ddp_saves_a_replicated_optimizer_once(run):
    out = run("ddp")
    assert (out / "optim1.pt").exists() and not list(out.glob("optim1.rank*"))


@pytest.mark.parametrize("name", params(["fsdp", "deepspeed_zero3"]))
def test_sharded_state_is_about_half_of_ddp_per_rank(name, run):
    ddp = results(run("ddp"), 0)["bytes"]
    for rank in (0, 1):
        sharded = results(run(name), rank)["bytes"]
        # Parameters and Adam moments are split in two (up to padding).
        assert sharded["params"] < 0.55 * ddp["params"]
        assert sharded["moments"] < 0.55 * ddp["moments"]
        if name == "fsdp":
            assert sharded["master"] == 0
            assert sum(sharded.values()) < 0.55 * sum(ddp.values())
        else:
            # DeepSpeed also keeps an fp32 master partition (P/2) even for fp32 weights:
            # (P/2 params + P/2 master + 2P/2 moments) / (P + 2P) = 2/3 of DDP's bytes.
            assert sharded["master"] < 0.55 * ddp["params"]
            assert sum(sharded.values()) < 0.7 * sum(ddp.values())


@pytest.mark.parametrize("name", params(["ddp", "fsdp", "deepspeed_zero3"]))
def test_gathered_params_generate_like_naive(name, run, reference):
    out = run(name)
    for rank in (0, 1):
        generated = results(out, rank)["generate"]
        # The ranks asked for different lengths: no collective may run inside gathered_params.
        assert generated["sequences"] == reference["generate"][generated["max_new_tokens"]]


@pytest.mark.parametrize("name", params(["fsdp", "deepspeed_zero3"]))
def test_generation_without_gathering_keeps_ranks_in_lockstep(name, run):
    """Sharded weights, one all-gather per layer per token: rank 0 finishes first and keeps stepping."""
    out = run(name)
    rank0, rank1 = results(out, 0)["synced"], results(out, 1)["synced"]
    assert rank1["response"] == rank1["reference"] and rank1["action_mask"] == [1] * 5
    end = rank0["reference"].index(rank0["eos"]) + 1  # up to and including the first EOS
    assert rank0["response"] == rank0["reference"][:end] + [0] * (5 - end)  # then pad, while rank 1 goes on
    assert rank0["action_mask"] == [1] * end + [0] * (5 - end)


def test_distributed_sampler_splits_the_data(run):
    batches = [results(run("ddp"), rank)["data"] for rank in (0, 1)]
    seen = [i for rank_batches in batches for batch in rank_batches for i in batch]
    assert sorted(seen) == list(range(10))  # disjoint and complete
    assert [sum(len(batch) for batch in rank_batches) for rank_batches in batches] == [5, 5]
    assert max(len(batch) for rank_batches in batches for batch in rank_batches) == 2  # batch_size is per rank


def test_a_failing_rank_stops_the_job_with_its_error(reference, tmp_path):
    # Rank 1 raises while rank 0 waits in a barrier whose own timeout (600 s) is far away.
    start = time.monotonic()
    proc = launch(["--standalone", "--nproc_per_node=2"],
                  _torchrun_args("ddp", {"timeout_s": 600}, "fail", reference["init"], tmp_path))
    [(code, log)] = _communicate([proc], TIMEOUT_S)
    assert code != 0
    assert "rank 1 failed on purpose" in log
    assert time.monotonic() - start < 120


def test_two_nodes_of_one_process_each(reference, tmp_path):
    port = _free_port()
    launcher = ["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
                "--rdzv_id=minichatgpt-two-nodes"]
    args = _torchrun_args("ddp", {}, "step", reference["init"], tmp_path)
    procs = [launch(launcher, args) for _ in range(2)]
    for code, log in _communicate(procs, TIMEOUT_S):
        assert code == 0, log[-6000:]
    assert_same_state(load_state_dict(str(tmp_path / "step.pt")), reference["step"], **TOL)


def test_every_name_builds_and_unknown_names_fail():
    assert set(STRATEGY_NAMES) == {
        "naive", "ddp", "fsdp", "colossalai_zero2", "colossalai_zero2_cpu", "colossalai_gemini",
        "colossalai_gemini_cpu", *(f"deepspeed_zero{s}{o}" for s in (1, 2, 3) for o in ("", "_offload"))}
    assert isinstance(build_strategy("naive"), NaiveStrategy)
    with pytest.raises(ValueError, match="unknown strategy 'zero9'"):
        build_strategy("zero9")


def test_imports_without_optional_engines():
    # None in sys.modules makes `import deepspeed` / `import colossalai` fail as if not installed.
    code = ("import sys; sys.modules.update(deepspeed=None, colossalai=None)\n"
            "from minichatgpt.trainer.strategies import (NaiveStrategy, DDPStrategy, ColossalAIStrategy,\n"
            "    FSDPStrategy, DeepSpeedStrategy)\n"
            "try:\n    DeepSpeedStrategy(stage=3)\nexcept ImportError as e:\n    print('ERROR', e)\n")
    done = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ERROR DeepSpeedStrategy needs deepspeed>=" in done.stdout and "pip install -e .[deepspeed]" in done.stdout


def test_strategies_are_independent_classes():
    for cls in (DDPStrategy, FSDPStrategy, DeepSpeedStrategy, ColossalAIStrategy):
        assert cls.__mro__[1].__name__ == "Strategy", cls
