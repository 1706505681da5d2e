"""Mixed precision through every strategy: autocast really computes in bf16, the RL math stays float32,
float32 masters are what is saved, fp16's loss scaling skips overflowing steps, and the distributed
strategies run bf16 SFT, RM and PPO steps on 2 CPU ranks like the naive strategy does."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from minichatgpt.functional import lm_loss
from minichatgpt.nn import Actor
from minichatgpt.trainer.strategies import ColossalAIStrategy, build_strategy
from minichatgpt.trainer.strategies.deepspeed import DeepSpeedOptions
from minichatgpt.trainer.strategies.fsdp import FSDPOptions
from minichatgpt.trainer.strategies.precision import LossScaling, as_dtype, autocast_module
from strategies import precision_worker as worker
from strategies.test_strategies import _deepspeed_usable

MATMULS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_scaled_dot_product_flash_attention_for_cpu"}


class MatmulDtypes(TorchDispatchMode):
    """Records the input dtype of every matrix product that runs inside it."""

    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in MATMULS:
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


def tiny_actor() -> Actor:
    torch.manual_seed(0)
    return Actor(config=worker.config())


def test_autocast_runs_matmuls_in_bf16_over_float32_weights():
    actor = autocast_module(tiny_actor(), torch.bfloat16, "cpu")
    ids = torch.randint(3, worker.VOCAB, (2, 6))
    with MatmulDtypes() as recorder:
        logits = actor(ids, torch.ones_like(ids))
    assert recorder.dtypes and set(recorder.dtypes) == {torch.bfloat16}
    assert logits.dtype == torch.bfloat16
    assert {p.dtype for p in actor.parameters()} == {torch.float32}


def test_autocast_survives_deepcopy_and_fp32_is_untouched():
    import copy

    actor = autocast_module(tiny_actor(), torch.bfloat16, "cpu")
    clone = copy.deepcopy(actor)
    assert clone.forward.__self__ is clone  # bound to the copy, not to the original
    plain = autocast_module(tiny_actor(), torch.float32, "cpu")
    assert "forward" not in vars(plain)


def test_bf16_strategy_computes_in_bf16_and_updates_float32_masters():
    strategy = build_strategy("naive", precision="bf16")
    actor = tiny_actor()
    optim = torch.optim.SGD(actor.parameters(), lr=1e-6)  # updates far below bf16's resolution
    before = {k: v.clone() for k, v in actor.state_dict().items()}
    actor, optim = strategy.prepare((actor, optim))
    assert {p.dtype for p in actor.parameters()} == {torch.bfloat16}
    assert {p.dtype for g in optim.param_groups for p in g["params"]} == {torch.float32}
    ids = torch.randint(3, worker.VOCAB, (2, 6))
    with MatmulDtypes() as recorder:
        loss = lm_loss(actor(ids, torch.ones_like(ids)), ids)
    assert set(recorder.dtypes) == {torch.bfloat16}
    strategy.backward(loss, actor, optim)
    grads = [p.grad.float().clone() for p in actor.parameters()]
    strategy.clip_grad_norm(actor, optim, 1e9)
    strategy.optimizer_step(optim, actor)
    masters = strategy.full_state_dict(actor)
    # master = initial float32 weight - lr * gradient, exactly as a float32 SGD step computes it
    for (name, param), grad in zip(actor.named_parameters(), grads):
        torch.testing.assert_close(masters[name], before[name] - 1e-6 * grad, rtol=0, atol=1e-9)
        assert torch.equal(param.float(), masters[name].to(torch.bfloat16).float())  # working copy follows
    assert any(not torch.equal(masters[k], before[k]) for k in before)  # the tiny update was kept


def test_bf16_checkpoint_resume_is_exact(tmp_path):
    def run(steps, load=None):
        strategy = build_strategy("naive", precision="bf16")
        actor = tiny_actor()
        optim = torch.optim.AdamW(actor.parameters(), lr=1e-3)
        actor, optim = strategy.prepare((actor, optim))
        if load:
            strategy.load_model(actor, load + ".model")
            strategy.load_optimizer(optim, load + ".optim")
        for step in steps:
            ids = torch.randint(3, worker.VOCAB, (2, 6), generator=torch.Generator().manual_seed(step))
            strategy.backward(lm_loss(actor(ids, torch.ones_like(ids)), ids), actor, optim)
            strategy.clip_grad_norm(actor, optim, 1.0)
            strategy.optimizer_step(optim, actor)
        return strategy, actor, optim

    strategy, actor, optim = run([0])
    path = str(tmp_path / "ckpt")
    strategy.save_model(actor, path + ".model")
    strategy.save_optimizer(optim, path + ".optim")
    run_on = run([1], load=path)
    uninterrupted = run([0, 1])
    resumed, straight = run_on[0].full_state_dict(run_on[1]), uninterrupted[0].full_state_dict(uninterrupted[1])
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_naive_bf16_steps_keep_float32_math_and_masters(tmp_path):
    results = worker.run(build_strategy("naive", precision="bf16"), str(tmp_path))
    assert results["sft"]["logits_dtype"] == "torch.bfloat16"
    assert results["sft"]["saved_dtypes"] == ["torch.float32"]
    assert set(results["ppo"]["math_dtypes"].values()) == {"torch.float32"}
    assert results["rm"]["scores_dtype"] == "torch.float32"
    assert all(results[stage]["changed"] for stage in ("sft", "rm", "ppo"))
    # bf16 keeps 8 mantissa bits: the loss of the same step agrees with float32 to about 2^-8 relative.
    fp32 = worker.run(build_strategy("naive", precision="fp32"), str(tmp_path))
    assert results["sft"]["loss"] == pytest.approx(fp32["sft"]["loss"], rel=2 ** -7)
    assert results["rm"]["loss"] == pytest.approx(fp32["rm"]["loss"], rel=2 ** -6)


def _overflowing_step(strategy, actor, optim, factor: float) -> float:
    ids = torch.randint(3, worker.VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    strategy.backward(lm_loss(actor(ids, torch.ones_like(ids)), ids) * factor, actor, optim)
    norm = float(strategy.clip_grad_norm(actor, optim, 1.0))
    (strategy.optimizer_step if torch.isfinite(torch.tensor(norm)) else strategy.zero_grad)(optim, actor)
    return norm


def test_fp16_scaler_skips_overflow_lowers_the_scale_and_round_trips(tmp_path):
    strategy = build_strategy("naive", precision="fp16")
    actor = strategy.prepare(tiny_actor())
    optim = torch.optim.SGD(actor.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in actor.state_dict().items()}
    scale = strategy.mixed.scaling.scaler(optim).get_scale()
    assert not torch.isfinite(torch.tensor(_overflowing_step(strategy, actor, optim, 1e30)))
    assert all(torch.equal(before[k], v) for k, v in actor.state_dict().items())  # skipped
    assert strategy.mixed.scaling.scaler(optim).get_scale() == scale / 2  # backoff factor 0.5
    assert torch.isfinite(torch.tensor(_overflowing_step(strategy, actor, optim, 1.0)))
    assert any(not torch.equal(before[k], v) for k, v in actor.state_dict().items())
    path = str(tmp_path / "optim.pt")
    strategy.save_optimizer(optim, path)
    fresh = build_strategy("naive", precision="fp16")
    fresh.load_optimizer(optim, path)
    assert fresh.mixed.scaling.scaler(optim).state_dict() == strategy.mixed.scaling.scaler(optim).state_dict()


def test_loss_scaling_is_off_except_for_fp16():
    assert not LossScaling("bf16", "cpu").enabled and not LossScaling("fp32", "cpu").enabled
    assert LossScaling("fp16", "cpu").enabled


def test_each_backend_reads_precision_its_own_way():
    options = FSDPOptions(precision="bf16")
    assert (as_dtype(options.param_dtype), as_dtype(options.reduce_dtype)) == (torch.bfloat16, torch.float32)
    config = DeepSpeedOptions(stage=2, precision="bf16").ds_config(train=True)
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    with pytest.raises(ValueError, match="bf16 or fp16"):
        ColossalAIStrategy(stage=3, precision="fp32")  # refused before it looks for CUDA
    with pytest.raises(ValueError, match="unknown precision"):
        build_strategy("naive", precision="fp8")


DISTRIBUTED = ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.skipif(
    n.startswith("deepspeed") and not _deepspeed_usable(), reason="deepspeed is not installed")) for n in DISTRIBUTED])
def test_bf16_sft_rm_ppo_steps_on_two_ranks(name, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([worker.ROOT, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker.__file__,
           "--strategy", name, "--precision", "bf16", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=worker.ROOT, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (tmp_path / "naive").mkdir()
    naive = worker.run(build_strategy("naive", precision="bf16"), str(tmp_path / "naive"))
    rank0 = json.loads((tmp_path / "results.rank0.json").read_text())
    assert rank0["precision"] == "bf16"
    assert rank0["sft"]["logits_dtype"] == "torch.bfloat16"  # forwards compute in bf16...
    assert set(rank0["ppo"]["math_dtypes"].values()) == {"torch.float32"}  # ...the RL math in float32
    assert rank0["sft"]["saved_dtypes"] == ["torch.float32"]  # and the saved state is the float32 master
    assert all(rank0[stage]["changed"] for stage in ("sft", "rm", "ppo"))
    # Same seed and data as the naive run (ZeRO-3 initializes inside zero.Init, so only nearly the same).
    assert rank0["sft"]["loss"] == pytest.approx(naive["sft"]["loss"], rel=2 ** -7)
    for value in rank0["ppo"]["stats"].values():
        assert torch.isfinite(torch.tensor(value))
