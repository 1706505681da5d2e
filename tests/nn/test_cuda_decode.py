"""generate(decode="static"): the static-KV-cache decoder of ``minichatgpt.nn.cuda_decode``, eager, on the CPU.

Greedy outputs equal the dynamic loop's and Hugging Face ``generate``'s token for token (log-probs to float
rounding) on every family, with rows ending at spread-out steps and with ``num_samples``. The CUDA-graph
variant runs here through a stand-in graph that re-runs the captured step and checks that it only reads the
buffers it was captured with; tests/gpu/test_cuda_decode.py captures real graphs."""

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, GPTNeoConfig, MistralConfig

from conftest import FAMILIES, policy_log_probs
from minichatgpt.nn import Actor, cuda_decode, generation
from minichatgpt.nn.cuda_decode import check_static_cache_support, resolve_decode
from minichatgpt.nn.generation import generate
from nn.test_generation_batching import MAX_NEW, PAD, left_padded, row_counter, scaled_up, spread_eos

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tiny_model_dirs):
    return scaled_up(tiny_model_dirs[request.param])


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def graph_model(request, tiny_model_dirs):
    """The families the graph-mode plumbing tests run on (one with learned positions, one with RoPE)."""
    return scaled_up(tiny_model_dirs[request.param])


def greedy(model, ids, mask, eos_ids, **kwargs):
    return generate(model, ids, mask, MAX_NEW, eos_token_id=eos_ids, pad_token_id=PAD, do_sample=False, **kwargs)


def assert_same_rollout(got, expected):
    for name in ("sequences", "attention_mask", "action_mask"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
    assert_close(got.log_probs, expected.log_probs, atol=1e-5, rtol=1e-4)


def test_static_greedy_equals_the_dynamic_loop_and_hf_generate(model):
    ids, mask = left_padded()
    eos_ids, stops = spread_eos(model, ids, mask)
    assert len(set(stops)) >= 3, stops
    static = greedy(model, ids, mask, eos_ids, decode="static")
    assert_same_rollout(static, greedy(model, ids, mask, eos_ids, decode="dynamic"))
    expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                              eos_token_id=eos_ids, pad_token_id=PAD)
    assert torch.equal(static.sequences, expected)
    assert static.action_mask.sum(1).tolist() == [s + 1 for s in stops]


def test_static_num_samples_equals_the_dynamic_loop(model):
    ids, mask = left_padded()
    eos_ids, _ = spread_eos(model, ids, mask)
    rows = row_counter(model)
    static = greedy(model, ids, mask, eos_ids, decode="static", num_samples=3)
    assert rows[0] == ids.size(0)  # the prompts ran once
    assert_same_rollout(static, greedy(model, ids, mask, eos_ids, decode="dynamic", num_samples=3))


def test_static_keeps_every_row_until_all_have_finished(model):
    ids, mask = left_padded()
    eos_ids, stops = spread_eos(model, ids, mask)
    rows = row_counter(model)
    rollout = greedy(model, ids, mask, eos_ids, decode="static")
    assert rows == [ids.size(0)] * rollout.action_mask.size(1)  # fixed shapes: finished rows fed pad, masked
    assert rollout.action_mask.size(1) == max(stops) + 1


def test_static_sampling_keeps_the_raw_policy_log_probs(model):
    ids, mask = left_padded()
    eos_ids, _ = spread_eos(model, ids, mask)
    rollout = generate(model, ids, mask, MAX_NEW, eos_token_id=eos_ids, pad_token_id=PAD, num_samples=2,
                       generator=torch.Generator().manual_seed(0), decode="static")
    expected = policy_log_probs(model, rollout)
    assert_close(rollout.log_probs, expected, atol=1e-5, rtol=1e-4)
    A = rollout.action_mask.size(1)
    assert torch.all(rollout.sequences[:, -A:][rollout.action_mask == 0] == PAD)


class ReplayingGraph:
    """Stands in for a captured CUDA graph on the CPU: ``replay`` re-runs the captured step into the output
    buffer, after checking that the step's input buffers are still the tensors, and the memory, it was
    captured with (a real graph reads those addresses and nothing else)."""

    captures, replays = 0, 0

    def __init__(self, forward, logits):
        decoder = forward.__self__
        self.forward, self.logits, self.decoder = forward, logits, decoder
        self.buffers = {n: (getattr(decoder, n), getattr(decoder, n).data_ptr())
                        for n in ("token", "mask", "position") if getattr(decoder, n) is not None}
        type(self).captures += 1

    def replay(self):
        for name, (tensor, pointer) in self.buffers.items():
            now = getattr(self.decoder, name)
            assert now is tensor and now.data_ptr() == pointer, f"{name} was replaced, not written in place"
        self.logits.copy_(self.forward())
        type(self).replays += 1


def on_a_stand_in_gpu(model, monkeypatch, capture):
    """Prompts, EOS ids and the dynamic loop's greedy rollout; then generate() set to take the CUDA-graph
    path on the CPU, with ``capture`` in place of the real capture and the warm-up on the current stream."""
    ids, mask = left_padded()
    eos_ids, _ = spread_eos(model, ids, mask)
    dynamic = greedy(model, ids, mask, eos_ids, decode="dynamic")
    monkeypatch.setattr(cuda_decode, "_capture", capture)
    monkeypatch.setattr(cuda_decode, "_warm_up", lambda forward, device: forward())
    monkeypatch.setattr(cuda_decode, "_FAILED_CAPTURES", set())
    monkeypatch.setattr(generation, "resolve_decode", lambda decode, *args: "cuda_graph")
    return ids, mask, eos_ids, dynamic


def test_graph_mode_replays_one_capture_from_static_buffers(graph_model, monkeypatch):
    def capture(forward, device):
        logits = torch.empty(forward.__self__.token.size(0), graph_model.get_output_embeddings().out_features)
        return ReplayingGraph(forward, logits), logits

    ids, mask, eos_ids, dynamic = on_a_stand_in_gpu(graph_model, monkeypatch, capture)
    ReplayingGraph.captures = ReplayingGraph.replays = 0
    graphed = greedy(graph_model, ids, mask, eos_ids, decode="cuda_graph")
    assert_same_rollout(graphed, dynamic)
    A = graphed.action_mask.size(1)
    assert (ReplayingGraph.captures, ReplayingGraph.replays) == (1, A - 2)  # prefill, 1 eager step, replays


def test_a_failed_capture_decodes_eagerly_under_auto_and_raises_when_asked_for(graph_model, monkeypatch):
    def failing(forward, device):
        raise RuntimeError("operation not permitted when stream is capturing")

    model = graph_model
    ids, mask, eos_ids, dynamic = on_a_stand_in_gpu(model, monkeypatch, failing)
    with pytest.raises(RuntimeError, match=f"{model.config.model_type}.*decode='static' or 'dynamic'"):
        greedy(model, ids, mask, eos_ids, decode="cuda_graph")
    with pytest.warns(UserWarning, match="capture .* failed"):
        eager = greedy(model, ids, mask, eos_ids, decode="auto")
    assert_same_rollout(eager, dynamic)
    assert model.config.model_type in cuda_decode._FAILED_CAPTURES
    assert resolve_decode("auto", model, CUDA, synced=False) == "dynamic"  # auto no longer tries


def test_auto_picks_the_graph_only_for_an_unsharded_supported_model_on_cuda(graph_model):
    model = graph_model
    assert resolve_decode("auto", model, CPU, synced=False) == "dynamic"
    assert resolve_decode("auto", model, CUDA, synced=False) == "cuda_graph"
    assert resolve_decode("auto", model, CUDA, synced=True) == "dynamic"
    assert resolve_decode("static", model, CPU, synced=True) == "static"


def test_bad_modes_and_devices_are_refused_by_name(graph_model):
    model = graph_model
    ids, mask = left_padded()
    with pytest.raises(ValueError, match="decode='eager'.*auto, dynamic, static, cuda_graph"):
        greedy(model, ids, mask, [2], decode="eager")
    with pytest.raises(ValueError, match="CUDA device, got cpu"):
        greedy(model, ids, mask, [2], decode="cuda_graph")
    with pytest.raises(ValueError, match="synced"):
        resolve_decode("cuda_graph", model, CUDA, synced=True)


TINY = dict(hidden_size=32, num_attention_heads=2, vocab_size=77, bos_token_id=2, eos_token_id=2, pad_token_id=0)
UNSUPPORTED = {
    "mistral": (MistralConfig(num_hidden_layers=2, intermediate_size=64, num_key_value_heads=2, sliding_window=4,
                              **TINY), "StaticSlidingWindowLayer"),
    "gpt_neo": (GPTNeoConfig(num_layers=2, attention_types=[[["global", "local"], 1]], window_size=4,
                             **dict(TINY, num_heads=2)), "does not support a static KV cache"),
}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_families_without_a_full_attention_static_cache_are_refused_by_model_type(name):
    config, reason = UNSUPPORTED[name]
    model = AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(ValueError, match=f"'{name}'.*{reason}.*decode='dynamic'"):
        check_static_cache_support(model)
    ids, mask = left_padded()
    with pytest.raises(ValueError, match=f"'{name}'"):
        greedy(model, ids, mask, [2], decode="static")
    assert resolve_decode("auto", model, CUDA, synced=False) == "dynamic"
    assert greedy(model, ids, mask, [2], decode="auto").sequences.size(0) == ids.size(0)


def test_actor_generate_passes_decode_through(tiny_model_dirs):
    actor = Actor(pretrained=tiny_model_dirs["llama"]).eval()
    ids, mask = left_padded()
    static = actor.generate(ids, mask, max_new_tokens=6, eos_token_id=[2], pad_token_id=PAD, do_sample=False,
                            decode="static")
    assert_same_rollout(static, actor.generate(ids, mask, max_new_tokens=6, eos_token_id=[2], pad_token_id=PAD,
                                               do_sample=False, decode="dynamic"))
