import torch
from torch.testing import assert_close

from minichatgpt.experience import Experience, ReplayBuffer, collate_experiences


def make_experience(prompt_lens, response_lens, offset=0.0):
    P, A = max(prompt_lens), max(response_lens)
    B = len(prompt_lens)
    attention = torch.zeros(B, P + A, dtype=torch.long)
    action = torch.zeros(B, A, dtype=torch.long)
    sequences = torch.zeros(B, P + A, dtype=torch.long)
    for i, (p, a) in enumerate(zip(prompt_lens, response_lens)):
        attention[i, P - p:P + a] = 1
        action[i, :a] = 1
        sequences[i, P - p:P + a] = torch.arange(1, p + a + 1) + 100 * i
    values = (torch.arange(B * A, dtype=torch.float).view(B, A) + offset) * action
    return Experience(sequences=sequences, attention_mask=attention, action_mask=action, log_probs=-values,
                      values=values, returns=values * 2, advantages=values * 3,
                      scores=torch.arange(B, dtype=torch.float) + offset, kl=torch.ones(B))


def test_split_then_collate_round_trips():
    exp = make_experience([3, 5, 1], [2, 4, 1])
    items = exp.split()
    assert [it.sequences.size(1) for it in items] == [5, 9, 2]  # padding trimmed
    back = collate_experiences(items)
    for name in ("sequences", "attention_mask", "action_mask", "log_probs", "values", "returns", "advantages",
                 "scores", "kl"):
        assert_close(getattr(back, name), getattr(exp, name), msg=name)


def test_collate_mixes_batches_of_different_lengths():
    a, b = make_experience([2], [3]), make_experience([6], [1], offset=10.0)
    batch = collate_experiences(a.split() + b.split())
    assert batch.sequences.shape == (2, 6 + 3)
    # Prompts are left-padded: the last prompt token sits right before the response in every row.
    assert batch.attention_mask[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert batch.attention_mask[1].tolist() == [1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert batch.action_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert_close(batch.values[1], torch.tensor([10.0, 0.0, 0.0]))


def test_buffer_limit_offload_and_passes():
    buffer = ReplayBuffer(sample_batch_size=2, limit=5, cpu_offload=True)
    buffer.append(make_experience([2, 3, 4], [1, 2, 3]))
    buffer.append(make_experience([1, 2, 3], [3, 2, 1], offset=50.0))
    assert len(buffer) == 5  # the oldest item was dropped
    batches = list(buffer.batches(shuffle=False))
    assert [b.sequences.size(0) for b in batches] == [2, 2, 1]
    seen = torch.cat([b.scores for b in batches])
    assert sorted(seen.tolist()) == [1.0, 2.0, 50.0, 51.0, 52.0]
    assert buffer.sample().sequences.size(0) == 2
    buffer.clear()
    assert len(buffer) == 0
