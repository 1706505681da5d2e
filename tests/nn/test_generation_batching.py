"""generate()'s running batch: finished rows leave it (their KV-cache rows too), and ``num_samples`` runs
each prompt once and repeats its KV cache. Greedy outputs must not change: they are compared token for
token with Hugging Face ``generate`` (which keeps every row), with generate() that keeps every row, and
with each prompt run G times; forward hooks count the rows each forward computes."""

import itertools

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from conftest import FAMILIES, pad_left, policy_log_probs, scramble_weights
from minichatgpt.nn import generation
from minichatgpt.nn.generation import generate

PAD = 0
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14], [15, 16, 17, 18]]  # left-padded into one batch
MAX_NEW = 12


def left_padded(prompts=PROMPTS):
    return pad_left(prompts, PAD)


def greedy(model, ids, mask, eos_ids, **kwargs):
    return generate(model, ids, mask, MAX_NEW, eos_token_id=eos_ids, pad_token_id=PAD, do_sample=False, **kwargs)


def spread_eos(model, ids, mask):
    """Up to three EOS ids ending the rows at the most distinct, most spread-out steps (searched among the
    tokens the rows produce when nothing stops them), and each row's index of its EOS (the last when none)."""
    free = greedy(model, ids, mask, [model.config.vocab_size + 9]).sequences[:, ids.size(1):]  # (B, MAX_NEW)

    def stops(eos_ids):
        hits = torch.isin(free, torch.tensor(eos_ids))
        return [int(row.nonzero()[0]) if row.any() else MAX_NEW - 1 for row in hits]

    def spread(eos_ids):
        s = stops(eos_ids)
        return len(set(s)), max(s) - min(s)

    tokens = sorted(set(free.flatten().tolist()))
    best = max(itertools.combinations(tokens, min(3, len(tokens))), key=spread)
    return list(best), stops(list(best))


def row_counter(model):
    """A list that receives the number of rows of every forward of ``model``."""
    rows = []
    model.register_forward_pre_hook(lambda module, args, kwargs: rows.append(kwargs["input_ids"].size(0)),
                                    with_kwargs=True)
    return rows


def keep_every_row(monkeypatch):
    """generate() as before finished rows left the batch: every row runs to the end."""
    monkeypatch.setattr(generation, "_surviving", lambda live, finished, keep_one: None)


def scaled_up(path):
    """The tiny model at ``path`` with larger random weights: at the default scale it mostly repeats the last
    prompt token, so no choice of EOS would end its rows at different steps."""
    return scramble_weights(AutoModelForCausalLM.from_pretrained(path).eval())


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tiny_model_dirs):
    return scaled_up(tiny_model_dirs[request.param])


def test_rows_ending_at_spread_out_steps_match_hf_and_the_batch_that_keeps_every_row(model, monkeypatch):
    ids, mask = left_padded()
    eos_ids, stops = spread_eos(model, ids, mask)
    assert len(set(stops)) >= 3 and max(stops) - min(stops) >= 4, stops
    rollout = greedy(model, ids, mask, eos_ids)
    expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                              eos_token_id=eos_ids, pad_token_id=PAD)
    assert torch.equal(rollout.sequences, expected)
    assert rollout.action_mask.sum(1).tolist() == [s + 1 for s in stops]
    keep_every_row(monkeypatch)
    full = greedy(model, ids, mask, eos_ids)
    assert torch.equal(rollout.sequences, full.sequences)
    assert torch.equal(rollout.attention_mask, full.attention_mask)
    assert torch.equal(rollout.action_mask, full.action_mask)
    assert_close(rollout.log_probs, full.log_probs, atol=1e-5, rtol=1e-4)


def test_a_finished_row_is_no_longer_computed(model):
    ids, mask = left_padded()
    eos_ids, stops = spread_eos(model, ids, mask)
    rows = row_counter(model)
    rollout = greedy(model, ids, mask, eos_ids)
    A = rollout.action_mask.size(1)
    # The prompt forward, then forward k (1 <= k < A) feeds step k - 1's tokens of the rows without EOS so far.
    assert rows == [len(PROMPTS)] + [sum(s >= k for s in stops) for k in range(1, A)]


@pytest.mark.parametrize("G", [1, 3])
def test_num_samples_greedy_is_g_copies_and_equals_recomputing_the_prompt(model, G):
    ids, mask = left_padded()
    eos_ids, _ = spread_eos(model, ids, mask)
    single = greedy(model, ids, mask, eos_ids)
    rows = row_counter(model)
    grouped = greedy(model, ids, mask, eos_ids, num_samples=G)
    assert rows[0] == len(PROMPTS)  # the prompts ran once, not G times
    recomputed = greedy(model, ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0), eos_ids)
    for name in ("sequences", "attention_mask", "action_mask"):
        assert torch.equal(getattr(grouped, name), getattr(single, name).repeat_interleave(G, 0)), name
        assert torch.equal(getattr(grouped, name), getattr(recomputed, name)), name
    assert_close(grouped.log_probs, recomputed.log_probs, atol=1e-5, rtol=1e-4)


def test_sampled_groups_keep_the_raw_policy_log_probs(model):
    ids, mask = left_padded()
    eos_ids, _ = spread_eos(model, ids, mask)
    rollout = generate(model, ids, mask, MAX_NEW, eos_token_id=eos_ids, pad_token_id=PAD, num_samples=2,
                       generator=torch.Generator().manual_seed(0))
    expected = policy_log_probs(model, rollout)
    assert_close(rollout.log_probs, expected, atol=1e-5, rtol=1e-4)
    assert torch.equal(rollout.sequences[:, :ids.size(1)], ids.repeat_interleave(2, 0))


def test_surviving_rows_and_the_one_row_a_synced_rank_keeps():
    live = torch.tensor([0, 2, 3])  # row 1 already left the batch
    assert generation._surviving(live, torch.tensor([False, True, False, False]), keep_one=False) is None
    finished = torch.tensor([False, True, True, False])
    assert generation._surviving(live, finished, keep_one=False).tolist() == [0, 2]  # positions within live
    everyone = torch.ones(4, dtype=torch.bool)
    assert generation._surviving(live, everyone, keep_one=False).tolist() == []
    assert generation._surviving(live, everyone, keep_one=True).tolist() == [0]  # one ignored row keeps stepping
    assert generation._surviving(live[:1], everyone, keep_one=True) is None
