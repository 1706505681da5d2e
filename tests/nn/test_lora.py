"""LoRA as functions over peft: trainable set, merge equivalence, adapter files others can load."""

import copy

import pytest
import torch
from peft import PeftModel
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from conftest import FAMILIES, tiny_config
from minichatgpt.nn import Actor, Critic, RewardModel, load_model, merged_copy


def perturb_adapters(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)


@pytest.mark.parametrize("family", FAMILIES)
def test_only_adapters_are_trainable_and_merge_is_exact(family):
    torch.manual_seed(0)
    actor = Actor(config=tiny_config(family), lora_rank=4).eval()
    trainable = [n for n, p in actor.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("lm_head" in n or "embed" in n for n in trainable)
    perturb_adapters(actor)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    merged = merged_copy(actor.model)
    assert not isinstance(merged, PeftModel)
    assert_close(merged(input_ids=ids).logits, actor(ids, torch.ones_like(ids)), atol=1e-5, rtol=1e-4)
    # The training model keeps its adapters.
    assert isinstance(actor.model, PeftModel)


@pytest.mark.parametrize("bias,expect_bias", [("none", False), ("all", True), ("lora_only", True)])
def test_lora_train_bias_modes(bias, expect_bias):
    actor = Actor(config=tiny_config("gpt2"), lora_rank=2, lora_train_bias=bias)
    trainable_bias = [n for n, p in actor.named_parameters() if p.requires_grad and n.endswith("bias")]
    assert bool(trainable_bias) == expect_bias
    with pytest.raises(ValueError, match="lora_train_bias"):
        Actor(config=tiny_config("gpt2"), lora_rank=2, lora_train_bias="some")


def test_adapter_and_merged_saves_load_without_minichatgpt(tmp_path, word_tokenizer):
    torch.manual_seed(0)
    base = load_model(config=tiny_config("llama", len(word_tokenizer))).eval()
    actor = Actor(copy.deepcopy(base), lora_rank=4).eval()
    perturb_adapters(actor)
    actor.save_pretrained(str(tmp_path / "out"), tokenizer=word_tokenizer)
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = actor(ids, torch.ones_like(ids))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert_close(merged(ids).logits, expected, atol=1e-5, rtol=1e-4)
    # The adapter directory is plain peft: the base model plus the adapter gives the same outputs.
    adapted = PeftModel.from_pretrained(base, tmp_path / "out" / "adapter").eval()
    assert_close(adapted(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-4)


def test_reward_model_shares_a_lora_critics_backbone():
    torch.manual_seed(0)
    rm = RewardModel(config=tiny_config("gpt2")).eval()
    critic = Critic(rm.model, torch.nn.Linear(32, 1, bias=False), lora_rank=4).eval()
    critic.value_head.weight.data.copy_(rm.value_head.weight.data)
    reference_scores = rm(torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)).detach()
    shared = RewardModel.sharing_backbone(critic).eval()
    perturb_adapters(critic)  # training the critic's adapters must not move the reward model
    critic.value_head.weight.data.add_(1.0)
    assert_close(shared(torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)), reference_scores)
    assert shared.model is critic.model  # one backbone in memory
    with pytest.raises(ValueError, match="LoRA"):
        RewardModel.sharing_backbone(Critic(config=tiny_config("gpt2")))
