"""generate() on tiny saved models, called directly on the Hugging Face model.

tests/nn/test_models.py already checks, through ``Actor.generate`` and one EOS id, greedy output against
``transformers`` for every family, left-padded rows against unpadded ones, greedy log-probs and the
masks after an early EOS. Here: a list of EOS ids, sampled (temperature / top-k / top-p) rollouts whose
log-probs are still the raw policy's, the number of forward passes, ``synced`` in one process, and the
training mode left as found.
"""

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from conftest import pad_left

from minichatgpt.nn.generation import accepts_position_ids, generate, position_ids_from_mask

PAD, EOS = 0, 2
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12]]  # left-padded into one batch
MAX_NEW = 8


def left_padded(prompts=PROMPTS):
    return pad_left(prompts, PAD)


def hf_model(tiny_model_dirs, family):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dirs[family]).eval()


def raw_log_probs(model, rollout):
    """(B, A) log_softmax of the model's logits at the chosen tokens, from one forward over the whole rollout."""
    A = rollout.action_mask.size(1)
    kwargs = {"position_ids": position_ids_from_mask(rollout.attention_mask)} if accepts_position_ids(model) else {}
    with torch.no_grad():
        logits = model(input_ids=rollout.sequences, attention_mask=rollout.attention_mask, **kwargs).logits
    log_probs = torch.log_softmax(logits[:, -A - 1:-1].float(), dim=-1)  # (B, A, V): position t predicts t + 1
    return log_probs.gather(-1, rollout.sequences[:, -A:].unsqueeze(-1)).squeeze(-1) * rollout.action_mask


def stopped(free_tokens: torch.Tensor, eos_ids) -> list:
    """Each row's index of its first token in ``eos_ids`` (or the last index when none)."""
    hits = torch.isin(free_tokens, torch.tensor(eos_ids))
    return [int(row.nonzero()[0]) if row.any() else free_tokens.size(1) - 1 for row in hits]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_with_an_eos_list_stops_each_row_at_its_first_eos_like_hf(family, tiny_model_dirs):
    model = hf_model(tiny_model_dirs, family)
    ids, mask = left_padded()
    free = generate(model, ids, mask, MAX_NEW, eos_token_id=[EOS], pad_token_id=PAD, do_sample=False)
    free_tokens = free.sequences[:, ids.size(1):]  # (B, MAX_NEW)
    assert free_tokens.size(1) == MAX_NEW and free.action_mask.all(), "the tiny model should not emit EOS by itself"
    # The id row 0 produces at step 1, and one outside the vocabulary (never produced).
    eos_ids = [int(free_tokens[0, 1]), model.config.vocab_size + 9]
    stops = stopped(free_tokens, eos_ids)
    assert stops[0] != stops[1], "rows should finish at different steps"
    A = max(stops) + 1

    rollout = generate(model, ids, mask, MAX_NEW, eos_token_id=eos_ids, pad_token_id=PAD, do_sample=False)
    action_mask = torch.tensor([[int(t <= s) for t in range(A)] for s in stops])  # up to and including EOS
    assert torch.equal(rollout.action_mask, action_mask)
    assert torch.equal(rollout.sequences[:, ids.size(1):], free_tokens[:, :A].masked_fill(action_mask == 0, PAD))
    assert torch.equal(rollout.attention_mask, torch.cat([mask, action_mask], dim=1))
    expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                              eos_token_id=eos_ids, pad_token_id=PAD)
    assert torch.equal(rollout.sequences, expected)
    assert_close(rollout.log_probs, raw_log_probs(model, rollout), atol=1e-5, rtol=1e-4)
    # Each row generated alone is its row of the batch, up to its own EOS.
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long), MAX_NEW,
                         eos_token_id=eos_ids, pad_token_id=PAD, do_sample=False)
        n = stops[row] + 1
        assert torch.equal(alone.sequences[0, len(prompt):], rollout.sequences[row, ids.size(1):][:n])
        assert_close(alone.log_probs[0], rollout.log_probs[row, :n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_sampled_log_probs_are_the_raw_policy_not_the_warped_one(family, tiny_model_dirs):
    model = hf_model(tiny_model_dirs, family)
    ids, mask = left_padded()
    rollout = generate(model, ids, mask, MAX_NEW, eos_token_id=[EOS], pad_token_id=PAD, do_sample=True,
                       temperature=0.7, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert_close(rollout.log_probs, raw_log_probs(model, rollout), atol=1e-5, rtol=1e-4)
    # Every sampled token is among the top 5 of the raw logits (temperature does not change the order).
    A = rollout.action_mask.size(1)
    kwargs = {"position_ids": position_ids_from_mask(rollout.attention_mask)}
    with torch.no_grad():
        logits = model(input_ids=rollout.sequences, attention_mask=rollout.attention_mask, **kwargs).logits
    top5 = logits[:, -A - 1:-1].topk(5, dim=-1).indices  # (B, A, 5)
    chosen = rollout.sequences[:, -A:].unsqueeze(-1)
    assert ((top5 == chosen).any(-1) | (rollout.action_mask == 0)).all()


def test_the_same_seed_samples_the_same_rollout(tiny_model_dirs):
    model = hf_model(tiny_model_dirs, "gpt2")
    ids, mask = left_padded()
    a, b = (generate(model, ids, mask, MAX_NEW, eos_token_id=EOS, pad_token_id=PAD,
                     generator=torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.log_probs, b.log_probs)


@pytest.mark.parametrize("synced", [False, True])
def test_one_forward_per_generated_token_and_synced_changes_nothing_in_one_process(synced, tiny_model_dirs):
    model = hf_model(tiny_model_dirs, "llama")
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    ids, mask = left_padded()
    reference = generate(model, ids, mask, MAX_NEW, eos_token_id=[EOS], pad_token_id=PAD, do_sample=False)
    calls.clear()
    free = generate(model, ids, mask, MAX_NEW, eos_token_id=[EOS], pad_token_id=PAD, do_sample=False, synced=synced)
    assert torch.equal(free.sequences, reference.sequences)
    assert len(calls) == MAX_NEW  # the prompt, then each new token but the last
    eos_ids = [int(t) for t in free.sequences[:, ids.size(1) + 2]]  # both rows end at step 2
    calls.clear()
    short = generate(model, ids, mask, MAX_NEW, eos_token_id=eos_ids, pad_token_id=PAD, do_sample=False, synced=synced)
    A = max(stopped(free.sequences[:, ids.size(1):], eos_ids)) + 1
    assert short.action_mask.size(1) == A <= 3 and len(calls) == A  # stopped once every row had ended


@pytest.mark.parametrize("training", [True, False])
def test_training_mode_is_left_as_found_and_no_graph_is_kept(training, tiny_model_dirs):
    model = hf_model(tiny_model_dirs, "gpt2").train(training)
    ids, mask = left_padded()
    rollout = generate(model, ids, mask, 3, eos_token_id=EOS, pad_token_id=PAD)
    assert model.training is training
    assert not rollout.log_probs.requires_grad and rollout.log_probs.dtype == torch.float32


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]])
    expected = torch.stack([(row.cumsum(0) - 1).clamp(min=0) for row in mask])
    assert torch.equal(position_ids_from_mask(mask), expected)
    assert position_ids_from_mask(mask)[0].tolist() == [0, 0, 0, 1, 2]

