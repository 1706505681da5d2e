"""Policy answers and the KL of a policy to a baseline on its own samples."""

import pytest
import torch

from minichatgpt.data import PromptCollator, PromptDataset
from minichatgpt.evaluation import SamplingSettings, sample_responses, sequence_kl
from minichatgpt.nn import Actor

PROMPTS = [{"instruction": f"describe the {w}"} for w in ("cat", "dog", "cake", "city", "soup")]


def test_same_seed_same_answers_and_zero_kl_to_itself(eval_model_dirs, eval_tokenizer):
    actor = Actor(pretrained=eval_model_dirs["lm"])
    prompts = PromptDataset(PROMPTS, eval_tokenizer, max_len=32)
    settings = SamplingSettings(max_new_tokens=6, seed=5, batch_size=2)
    first = sample_responses(actor, eval_tokenizer, prompts, settings, reference=actor)
    second = sample_responses(actor, eval_tokenizer, prompts, settings)
    assert first.texts == second.texts and torch.equal(first.lengths, second.lengths)
    assert len(first.texts) == len(PROMPTS) and second.kl is None
    torch.testing.assert_close(first.kl, torch.zeros(len(PROMPTS)), atol=1e-4, rtol=0)


def test_kl_is_the_summed_log_ratio_on_the_policy_samples(eval_model_dirs, eval_tokenizer):
    """Sampled answers to left-padded prompts: per row, the sum over its real response tokens of
    log pi(y_t) - log pi_ref(y_t), computed by hand on the unpadded sequence."""
    policy, reference = Actor(pretrained=eval_model_dirs["lm"]), Actor(pretrained=eval_model_dirs["lm2"])
    prompts = PromptDataset(PROMPTS[:3], eval_tokenizer, max_len=32)
    batch = PromptCollator(eval_tokenizer.pad_token_id)([prompts[i] for i in range(3)])
    rollout = policy.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=5,
                              eos_token_id=eval_tokenizer.eos_token_id, pad_token_id=eval_tokenizer.pad_token_id,
                              generator=torch.Generator().manual_seed(0))
    kl = sequence_kl(reference, rollout.sequences, rollout.attention_mask, rollout.action_mask, rollout.log_probs)
    for row in range(3):
        real = rollout.attention_mask[row].bool()
        ids = rollout.sequences[row][real].unsqueeze(0)
        n_response = int(rollout.action_mask[row].sum())
        with torch.no_grad():
            lp = policy.model(input_ids=ids).logits[0].log_softmax(-1)
            lr = reference.model(input_ids=ids).logits[0].log_softmax(-1)
        expected = sum(float(lp[t - 1, ids[0, t]] - lr[t - 1, ids[0, t]])
                       for t in range(ids.size(1) - n_response, ids.size(1)))
        assert float(kl[row]) == pytest.approx(expected, abs=1e-4)
