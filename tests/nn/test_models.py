"""Models over real Hugging Face loading paths: tiny models of each family saved to disk."""

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from conftest import FAMILIES, SMOLLM2_GGUF, requires_shared, tiny_config
from minichatgpt.functional import log_probs_from_logits
from minichatgpt.nn import (Actor, BLOOMActor, Critic, GPTActor, GPTCritic, GPTRM, LlamaActor, OPTActor, RewardModel,
                            load_tokenizer)

EOS, PAD = 2, 0


@pytest.mark.parametrize("family", FAMILIES)
def test_family_loads_from_directory_and_generates_like_hf(family, tiny_model_dirs):
    path = tiny_model_dirs[family]
    actor = Actor(pretrained=path).eval()
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor([[PAD, PAD, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = (ids != PAD).long()
    rollout = actor.generate(ids, mask, max_new_tokens=6, do_sample=False, eos_token_id=EOS, pad_token_id=PAD)
    expected = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                           eos_token_id=EOS, pad_token_id=PAD)
    assert torch.equal(rollout.sequences, expected)
    # The kept log-probs equal a full forward pass over the finished sequences.
    A = rollout.action_mask.size(1)
    with torch.no_grad():
        full = log_probs_from_logits(actor(rollout.sequences, rollout.attention_mask, A), rollout.sequences[:, -A:])
    assert_close(rollout.log_probs, full * rollout.action_mask, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_generation_equals_unpadded(family):
    torch.manual_seed(0)
    actor = Actor(config=tiny_config(family)).eval()
    short, long = [5, 6], [7, 8, 9, 10]
    batch = actor.generate(torch.tensor([[PAD, PAD] + short, long]), torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]),
                           max_new_tokens=5, do_sample=False, eos_token_id=EOS, pad_token_id=PAD)
    for row, prompt in enumerate([short, long]):
        alone = actor.generate(torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long),
                               max_new_tokens=5, do_sample=False, eos_token_id=EOS, pad_token_id=PAD)
        n = alone.action_mask.size(1)
        assert torch.equal(batch.sequences[row, -5:][:n], alone.sequences[0, -n:])
        assert_close(batch.log_probs[row, :n], alone.log_probs[0], atol=1e-5, rtol=1e-4)


def test_generation_masks_everything_after_eos():
    torch.manual_seed(0)
    actor = Actor(config=tiny_config("gpt2")).eval()
    with torch.no_grad():  # make token 9 the only likely continuation after 8, and EOS after 9
        head = actor.model.lm_head.weight
        head.zero_()
    bias = torch.full((77,), -1e4)

    class Forced(torch.nn.Module):
        """Row 0 emits EOS at step 2, row 1 never does: early EOS must be masked per row."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.step = inner, 0

        def forward(self, **kwargs):
            out = self.inner(**kwargs)
            logits = bias.repeat(out.logits.size(0), out.logits.size(1), 1)
            if logits.size(0) == 2:  # row 0 leaves the running batch once it has emitted EOS
                logits[0, :, EOS if self.step == 2 else 11] = 0.0
            logits[-1, :, 12] = 0.0
            out.logits = logits
            self.step += 1
            return out

    from minichatgpt.nn.generation import generate

    rollout = generate(Forced(actor.model), torch.tensor([[5, 6], [7, 8]]), torch.ones(2, 2, dtype=torch.long),
                       max_new_tokens=5, do_sample=False, eos_token_id=EOS, pad_token_id=PAD)
    assert rollout.sequences[0, 2:].tolist() == [11, 11, EOS, PAD, PAD]
    assert rollout.action_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert rollout.attention_mask[0].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert torch.all(rollout.log_probs[0, 3:] == 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_reward_read_at_last_real_token_with_either_padding(family):
    torch.manual_seed(0)
    rm = RewardModel(config=tiny_config(family)).eval()
    seq = [5, 6, 7, 8]
    alone = rm(torch.tensor([seq]), torch.ones(1, 4, dtype=torch.long))
    right = rm(torch.tensor([seq + [PAD, PAD]]), torch.tensor([[1, 1, 1, 1, 0, 0]]))
    left = rm(torch.tensor([[PAD, PAD] + seq]), torch.tensor([[0, 0, 1, 1, 1, 1]]))
    assert_close(right, alone, atol=1e-5, rtol=1e-4)
    assert_close(left, alone, atol=1e-5, rtol=1e-4)
    # EOS used as pad (GPT-2 style): the real EOS at the end still counts, the pads after it do not.
    eos_seq = seq + [EOS]
    as_pad = rm(torch.tensor([eos_seq + [EOS, EOS]]), torch.tensor([[1] * 5 + [0, 0]]))
    assert_close(as_pad, rm(torch.tensor([eos_seq]), torch.ones(1, 5, dtype=torch.long)), atol=1e-5, rtol=1e-4)


def test_critic_gives_one_value_per_response_token():
    torch.manual_seed(0)
    critic = Critic(config=tiny_config("llama")).eval()
    values = critic(torch.tensor([[5, 6, 7, 8, 9]]), torch.ones(1, 5, dtype=torch.long), num_actions=3)
    assert values.shape == (1, 3)
    # The value of token t is read from the state before it: position t - 1.
    with torch.no_grad():
        hidden = critic.model(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).last_hidden_state
    assert_close(values, critic.value_head(hidden[:, 1:4]).squeeze(-1))


def test_family_names_are_the_generic_classes_with_default_configs():
    assert issubclass(GPTActor, Actor) and issubclass(GPTCritic, Critic) and issubclass(GPTRM, RewardModel)
    small = dict(n_layer=1, n_embd=16, n_head=2, vocab_size=50)
    assert GPTActor(config=dict(model_type="gpt2", **small)).model.config.n_layer == 1
    for cls, model_type in ((OPTActor, "opt"), (BLOOMActor, "bloom"), (LlamaActor, "llama")):
        assert cls.default_config().model_type == model_type
    with pytest.raises(ValueError, match="pretrained"):
        Actor()


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        Actor(pretrained=str(tmp_path / "does-not-exist"))


def test_saved_models_load_with_plain_transformers(tmp_path, word_tokenizer):
    torch.manual_seed(0)
    cfg = tiny_config("gpt2", len(word_tokenizer))
    actor, rm = Actor(config=cfg).eval(), RewardModel(config=cfg).eval()
    actor.save_pretrained(str(tmp_path / "actor"), tokenizer=word_tokenizer)
    rm.save_pretrained(str(tmp_path / "rm"), tokenizer=word_tokenizer)
    ids = torch.tensor([[5, 6, 7, 8]])
    hf_actor = AutoModelForCausalLM.from_pretrained(tmp_path / "actor").eval()
    assert_close(hf_actor(ids).logits, actor(ids, torch.ones_like(ids)))
    hf_rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert_close(hf_rm(ids).logits.squeeze(-1), rm(ids, torch.ones_like(ids)), atol=1e-5, rtol=1e-4)
    # Our own loader reads the score head back, so a reloaded RM scores identically.
    again = RewardModel(pretrained=str(tmp_path / "rm")).eval()
    assert_close(again(ids, torch.ones_like(ids)), rm(ids, torch.ones_like(ids)))
    assert load_tokenizer(str(tmp_path / "rm")).pad_token_id == word_tokenizer.pad_token_id


def test_gradient_checkpointing_keeps_gradients():
    torch.manual_seed(0)
    cfg = tiny_config("llama")
    plain, ckpt = Actor(config=cfg), Actor(config=cfg, checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    ids = torch.tensor([[5, 6, 7, 8]])
    for model in (plain, ckpt):
        model.train()
        model(ids, torch.ones_like(ids)).logsumexp(-1).sum().backward()
    grads = [dict((n, p.grad) for n, p in m.named_parameters()) for m in (plain, ckpt)]
    for name, grad in grads[0].items():
        assert_close(grads[1][name], grad, msg=name)


@pytest.mark.slow
@requires_shared(SMOLLM2_GGUF)
def test_smollm2_gguf_loads_and_answers():
    tokenizer = load_tokenizer(SMOLLM2_GGUF)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    actor = Actor(pretrained=SMOLLM2_GGUF).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = actor.generate(ids.input_ids, ids.attention_mask, max_new_tokens=12, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    assert "Paris" in tokenizer.decode(out.sequences[0, ids.input_ids.size(1):], skip_special_tokens=True)
