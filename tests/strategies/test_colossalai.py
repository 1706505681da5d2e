"""ColossalAIStrategy without ColossalAI: the clear error here, and its plumbing against a recording stub.

ColossalAI needs CUDA and its own environment (torch<=2.5.1), so the real engine runs only there; these
tests check what this package adds around it: option mapping, the optimizer swap, the contract calls.
"""

import importlib.util
import sys
import types

import pytest
import torch
import torch.nn as nn

from minichatgpt.trainer.strategies import ColossalAIStrategy, build_strategy


@pytest.mark.skipif(torch.cuda.is_available() and importlib.util.find_spec("colossalai") is not None,
                    reason="colossalai and CUDA are both present")
def test_without_cuda_or_colossalai_the_error_says_how_to_set_it_up():
    with pytest.raises((RuntimeError, ImportError)) as error:
        ColossalAIStrategy(stage=3, placement_policy="cuda")
    message = str(error.value)
    assert "pip install -e .[colossalai]" in message
    assert "torch<=2.5.1" in message and "transformers==4.51.3" in message
    with pytest.raises((RuntimeError, ImportError), match=r"\.\[colossalai\]"):
        build_strategy("colossalai_gemini_cpu")


class _Recorder:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class _BoostedOptimizer:
    """Stands in for LowLevelZero/Gemini optimizers: steps the wrapped optimizer, reports a norm."""

    def __init__(self, optim):
        self.optim, self.steps = optim, 0

    def step(self):
        self.steps += 1
        self.optim.step()

    def zero_grad(self):
        self.optim.zero_grad()

    def get_grad_norm(self):
        return 0.5


class _Booster:
    def __init__(self, plugin):
        self.plugin = plugin

    def boost(self, model, optimizer):
        return model, _BoostedOptimizer(optimizer), None, None, None

    def backward(self, loss, optimizer):
        loss.backward()


class _HybridAdam(torch.optim.AdamW):
    def __init__(self, groups, adamw_mode=True):
        super().__init__(groups)
        self.adamw_mode = adamw_mode


@pytest.fixture
def fake_colossalai(monkeypatch):
    root = types.ModuleType("colossalai")
    root.launch_from_torch = lambda seed: None
    booster = types.ModuleType("colossalai.booster")
    booster.Booster = _Booster
    plugin = types.ModuleType("colossalai.booster.plugin")
    plugin.LowLevelZeroPlugin = type("LowLevelZeroPlugin", (_Recorder,), {})
    plugin.GeminiPlugin = type("GeminiPlugin", (_Recorder,), {})
    nn_module = types.ModuleType("colossalai.nn")
    optimizer = types.ModuleType("colossalai.nn.optimizer")
    optimizer.HybridAdam = _HybridAdam
    for name, module in {"colossalai": root, "colossalai.booster": booster, "colossalai.booster.plugin": plugin,
                         "colossalai.nn": nn_module, "colossalai.nn.optimizer": optimizer}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ColossalAIStrategy, "device", property(lambda self: torch.device("cpu")))


def test_seed_api_arguments_reach_the_right_plugin(fake_colossalai):
    gemini = build_strategy("colossalai_gemini_cpu", search_range_mb=64, pin_memory=True, shard_init=True,
                            overlap_communication=False).booster.plugin
    assert type(gemini).__name__ == "GeminiPlugin"
    assert gemini.kwargs["search_range_m"] == 64 and gemini.kwargs["pin_memory"] is True
    assert gemini.kwargs["offload_optim_frac"] == gemini.kwargs["offload_param_frac"] == 1.0
    assert gemini.kwargs["enable_gradient_accumulation"] is True
    assert "shard_init" not in gemini.kwargs and "overlap_communication" not in gemini.kwargs
    zero = ColossalAIStrategy(stage=2, placement_policy="cuda", precision="bf16", reduce_bucket_size=12 * 1024 ** 2,
                              pin_memory=True).booster.plugin
    assert type(zero).__name__ == "LowLevelZeroPlugin"
    assert zero.kwargs == dict(stage=2, precision="bf16", max_norm=1.0, cpu_offload=False, reduce_bucket_size_in_m=12)


def test_contract_calls_go_through_the_booster(fake_colossalai):
    strategy = ColossalAIStrategy(stage=3, max_norm=1.0)
    model = nn.Linear(4, 1)
    frozen = nn.Linear(4, 1)
    (model, optim), frozen_out = strategy.prepare((model, torch.optim.AdamW(model.parameters(), lr=0.1)), frozen)
    assert isinstance(optim.optim, _HybridAdam) and optim.optim.adamw_mode  # Gemini needs ColossalAI's Adam
    assert frozen_out is frozen
    loss = model(torch.ones(2, 4)).pow(2).mean()
    strategy.backward(loss, model, optim)
    norm = strategy.clip_grad_norm(model, optim, 1.0)
    strategy.optimizer_step(optim, model)
    assert optim.steps == 1 and float(norm) == 0.5  # filled in by the step
    with pytest.raises(ValueError, match=r"max_norm=0.3"):
        strategy.clip_grad_norm(model, optim, 0.3)
    with pytest.raises(ValueError, match="only_rank0=False"):
        strategy.save_optimizer(optim, "never.pt", only_rank0=True)
    with pytest.raises(ValueError, match="Adam/AdamW only"):
        strategy.prepare((nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)))


def test_load_model_checks_the_file_before_the_booster_reads_it(fake_colossalai, tmp_path):
    """A plain tensor file reaches the booster; a pickle holding code is refused first, naming the file."""
    loaded = []
    _Booster.load_model = lambda self, model, path, strict=True: loaded.append(path)
    strategy = ColossalAIStrategy(stage=2)
    good = tmp_path / "actor.pt"
    torch.save({"weight": torch.zeros(1, 4)}, good)
    strategy.load_model(nn.Linear(4, 1), str(good))
    assert loaded == [str(good)]
    evil = tmp_path / "evil.pt"
    torch.save({"weight": types.SimpleNamespace(code="not a tensor")}, evil)
    with pytest.raises(Exception, match="evil.pt"):
        strategy.load_model(nn.Linear(4, 1), str(evil))
    assert loaded == [str(good)]
