"""Placement of frozen models: ``offload_frozen`` keeps the reference and reward models in CPU memory between
forwards and changes no number; ``DeepSpeedOptions`` gives each trained engine its own ZeRO stage."""

import copy

import pytest
import torch
import torch.nn as nn
from torch.testing import assert_close

from conftest import tiny_config
from minichatgpt.experience import ExperienceMaker
from minichatgpt.functional import log_probs_from_logits
from minichatgpt.nn import Actor, Critic, RewardModel
from minichatgpt.nn.generation import Rollout
from minichatgpt.trainer.strategies import NaiveStrategy
from minichatgpt.trainer.strategies.deepspeed_options import DeepSpeedOptions
from minichatgpt.trainer.strategies.offload import offload_between_forwards, shares_trained_parameters


def devices_during_forward(module: nn.Module) -> list:
    """Records the parameters' devices inside each forward (a pre-hook registered after the offload's runs after)."""
    seen = []
    module.register_forward_pre_hook(lambda m, args: seen.append({p.device.type for p in m.parameters()}))
    return seen


def test_weights_visit_the_device_only_for_the_forward_and_come_back_unchanged():
    # The "meta" device holds no data: if the weights came back from it rather than from the host copy,
    # they would be lost. The forward itself runs on meta tensors.
    layer = nn.Linear(4, 3).requires_grad_(False)
    original = {k: v.clone() for k, v in layer.state_dict().items()}
    offload_between_forwards(layer, torch.device("meta"))
    seen = devices_during_forward(layer)
    for _ in range(2):
        out = layer(torch.empty(2, 4, device="meta"))
        assert out.device.type == "meta"
        assert {p.device.type for p in layer.parameters()} == {"cpu"}
    assert seen == [{"meta"}, {"meta"}]
    for key, value in layer.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_weights_come_back_when_the_forward_fails():
    layer = offload_between_forwards(nn.Linear(4, 3).requires_grad_(False), torch.device("meta"))
    with pytest.raises(RuntimeError):
        layer(torch.empty(2, 5, device="meta"))  # wrong width
    assert {p.device.type for p in layer.parameters()} == {"cpu"}


def test_a_trained_module_cannot_be_offloaded():
    with pytest.raises(ValueError, match="frozen"):
        offload_between_forwards(nn.Linear(4, 3), torch.device("cpu"))


def models(lora_rank: int = 0):
    torch.manual_seed(0)
    cfg = tiny_config("gpt2")
    actor, critic = Actor(config=cfg, lora_rank=lora_rank), Critic(config=cfg, lora_rank=lora_rank)
    reference = copy.deepcopy(actor).requires_grad_(False)
    with torch.no_grad():  # a reference that differs, so the KL term is not zero
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return actor, critic, RewardModel(config=cfg).requires_grad_(False), reference


def experience(strategy: NaiveStrategy):
    actor, critic, reward_model, reference = models()
    optims = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (actor, critic)]
    (actor, _), (critic, _), reward_model, reference = strategy.prepare(
        (actor, optims[0]), (critic, optims[1]), reward_model, reference)
    seen = {name: devices_during_forward(m) for name, m in (("reference", reference), ("reward", reward_model))}
    sequences = torch.randint(3, 77, (3, 9), generator=torch.Generator().manual_seed(1))
    attention_mask, action_mask = torch.ones_like(sequences), torch.ones(3, 4, dtype=torch.long)
    with torch.no_grad():
        log_probs = log_probs_from_logits(actor(sequences, attention_mask, 4), sequences[:, -4:])
    maker = ExperienceMaker(actor, critic, reward_model, reference)
    exp = maker.make_experience(Rollout(sequences, attention_mask, action_mask, log_probs), kl_coef=0.1)
    return exp, seen, (reference, reward_model)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_offloaded_frozen_models_give_the_same_experience(precision):
    plain, _, _ = experience(NaiveStrategy("cpu", precision=precision))
    offloaded, seen, frozen = experience(NaiveStrategy("cpu", precision=precision, offload_frozen=True))
    for name in ("log_probs", "values", "returns", "advantages", "scores", "kl"):
        assert_close(getattr(offloaded, name), getattr(plain, name), rtol=0, atol=0, msg=name)
    assert seen == {"reference": [{"cpu"}], "reward": [{"cpu"}]}  # the compute device (this machine's CPU)
    for model in frozen:
        assert hasattr(model, "forward_placement")
        assert {p.device.type for p in model.parameters()} == {"cpu"}
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16 if precision == "bf16" else torch.float32}


def test_a_reward_model_sharing_the_critic_backbone_stays_put():
    _, critic, _, _ = models(lora_rank=4)
    reward_model = RewardModel.sharing_backbone(critic)
    optim = torch.optim.Adam([p for p in critic.parameters() if p.requires_grad], lr=1e-3)
    assert shares_trained_parameters(reward_model, [(critic, optim), reward_model])
    (critic, _), reward_model = NaiveStrategy("cpu", offload_frozen=True).prepare((critic, optim), reward_model)
    assert not hasattr(reward_model, "forward_placement")


def test_each_pair_gets_its_own_zero_stage():
    options = DeepSpeedOptions(stage=2, pair_stages=(3, None), offload_frozen=True)
    assert [options.pair_stage(i) for i in range(3)] == [3, 2, 2]  # past the tuple: the strategy's stage
    assert options.stages() == (2, 3)
    assert options.ds_config(True, 3)["zero_optimization"] == {"stage": 3}
    frozen = options.ds_config(False, options.frozen_stage())["zero_optimization"]
    assert frozen["stage"] == 3 and frozen["offload_param"]["device"] == "cpu"
    assert DeepSpeedOptions(stage=2).frozen_stage() is None  # plain modules on the device
    assert DeepSpeedOptions(stage=3).frozen_stage() == 3


def test_the_flags_stage_wins_over_the_config_file_and_the_files_over_the_name():
    options = DeepSpeedOptions(stage=2, config={"zero_optimization": {"stage": 3, "reduce_bucket_size": 10}},
                               pair_stages=(1,))
    assert options.stage == 3  # the file's stage is the strategy's default
    assert options.ds_config(True, options.pair_stage(0))["zero_optimization"] == {"stage": 1,
                                                                                   "reduce_bucket_size": 10}


@pytest.mark.parametrize("bad", [dict(stage=0), dict(stage=4), dict(pair_stages=(3, 5))])
def test_stages_outside_1_to_3_are_refused(bad):
    with pytest.raises(ValueError, match="ZeRO stage"):
        DeepSpeedOptions(**bad)


@pytest.fixture
def group_of_one():
    """FSDP joins a process group of one (init_process_group picks a free port without torchrun)."""
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def test_fsdp_keeps_offloaded_frozen_shards_on_the_cpu(group_of_one):
    from minichatgpt.trainer.strategies import FSDPStrategy

    plain, _, _ = experience(NaiveStrategy("cpu"))
    offloaded, _, frozen = experience(FSDPStrategy(offload_frozen=True))
    for name in ("log_probs", "values", "returns", "advantages", "scores", "kl"):
        assert_close(getattr(offloaded, name), getattr(plain, name), rtol=1e-5, atol=1e-5, msg=name)
    for model in frozen:  # sharded parameters held in CPU memory, not gathered after the forward
        assert {type(p).__name__ for p in model.parameters()} == {"DTensor"}
        assert {p.to_local().device.type for p in model.parameters()} == {"cpu"}
