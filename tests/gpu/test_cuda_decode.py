"""generate(decode="cuda_graph") on a GPU: the decode step captured once in a CUDA graph and replayed gives
the dynamic loop's greedy tokens (log-probs to float rounding), with ``num_samples``, under autocast and with
LoRA; ``auto`` picks it on CUDA. Speed is measured by benchmarks/gpu_check.sh (step ``generate_graph``), not
here. Marked ``gpu``; skipped where no CUDA device is visible.

    python -m pytest -m gpu -q tests/gpu/test_cuda_decode.py
"""

import pytest
import torch
from torch.testing import assert_close

from conftest import pad_left, policy_log_probs, tiny_config
from minichatgpt.nn import Actor
from minichatgpt.nn.generation import generate
from minichatgpt.trainer.strategies import build_strategy

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

VOCAB, PAD, MAX_NEW = 77, 0, 16
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14], [15, 16, 17, 18]]


@pytest.fixture
def replays(monkeypatch):
    """A list that receives one entry per CUDA graph replay."""
    calls = []
    replay = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda graph: (calls.append(1), replay(graph))[1])
    return calls


def scaled_up_actor(family: str, **kwargs) -> Actor:
    """A tiny actor on the GPU with larger random weights, so that EOS ids end its rows at different steps."""
    torch.manual_seed(0)
    actor = Actor(config=tiny_config(family, VOCAB), **kwargs)
    with torch.no_grad():
        for p in actor.model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    return actor.cuda().eval()


def prompts_and_eos(model):
    """Left-padded prompts on the GPU and two EOS ids taken from the free-running greedy tokens, so that
    rows end at different steps."""
    ids, mask = (t.cuda() for t in pad_left(PROMPTS, PAD))
    free = generate(model, ids, mask, MAX_NEW, eos_token_id=-1, pad_token_id=PAD, do_sample=False,
                    decode="dynamic").sequences[:, ids.size(1):]
    return ids, mask, [int(free[0, 2]), int(free[1, 9])]


def rollouts(model, ids, mask, eos_ids, decodes, **kwargs):
    return [generate(model, ids, mask, MAX_NEW, eos_token_id=eos_ids, pad_token_id=PAD, decode=decode, **kwargs)
            for decode in decodes]


@pytest.mark.parametrize("family", ["gpt2", "llama", "opt", "bloom"])
@pytest.mark.parametrize("G", [1, 3])
def test_graph_greedy_equals_the_dynamic_loop(family, G, replays):
    model = scaled_up_actor(family).model
    ids, mask, eos_ids = prompts_and_eos(model)
    graphed, dynamic = rollouts(model, ids, mask, eos_ids, ["cuda_graph", "dynamic"], do_sample=False,
                                num_samples=G)
    assert len(replays) == graphed.action_mask.size(1) - 2  # one eager step (the warm-up), then replays
    for name in ("sequences", "attention_mask", "action_mask"):
        assert torch.equal(getattr(graphed, name), getattr(dynamic, name)), name
    assert_close(graphed.log_probs, dynamic.log_probs, atol=1e-4, rtol=1e-4)
    assert len(set(graphed.action_mask.sum(1).tolist())) > 1  # rows ended at different steps


def test_auto_replays_a_graph_on_cuda(replays):
    model = scaled_up_actor("llama").model
    ids, mask, eos_ids = prompts_and_eos(model)
    auto, dynamic = rollouts(model, ids, mask, eos_ids, ["auto", "dynamic"], do_sample=False)
    assert replays and torch.equal(auto.sequences, dynamic.sequences)


def test_graph_sampling_keeps_the_raw_policy_log_probs():
    model = scaled_up_actor("gpt2").model
    ids, mask, eos_ids = prompts_and_eos(model)
    (rollout,) = rollouts(model, ids, mask, eos_ids, ["cuda_graph"], num_samples=2,
                          generator=torch.Generator("cuda").manual_seed(0))
    expected = policy_log_probs(model, rollout)
    assert_close(rollout.log_probs, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_graph_equals_eager_static_steps_under_the_strategys_precision(precision, replays):
    """bf16 weights, or fp16 autocast over float32 weights (the capture turns autocast's cast cache off):
    the replayed kernels are the eager static steps' kernels, so the tokens are the same."""
    strategy = build_strategy("naive", precision=precision)
    actor = strategy.prepare(scaled_up_actor("llama"))
    ids, mask, eos_ids = prompts_and_eos(actor.model)
    graphed, static = (actor.generate(ids, mask, max_new_tokens=MAX_NEW, eos_token_id=eos_ids, pad_token_id=PAD,
                                      do_sample=False, decode=decode) for decode in ("cuda_graph", "static"))
    assert replays and torch.equal(graphed.sequences, static.sequences)
    assert_close(graphed.log_probs, static.log_probs, atol=1e-2, rtol=1e-2)


def test_graph_with_lora_adapters_equals_the_dynamic_loop():
    actor = scaled_up_actor("llama", lora_rank=4)
    ids, mask, eos_ids = prompts_and_eos(actor.model)
    graphed, dynamic = rollouts(actor.model, ids, mask, eos_ids, ["cuda_graph", "dynamic"], do_sample=False)
    assert torch.equal(graphed.sequences, dynamic.sequences)
