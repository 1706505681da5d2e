"""``--offload_reference_model`` on CUDA: frozen models sit in (pinned) CPU memory between forwards, visit the
GPU only for their forward, and CUDA memory drops back after it. Marked ``gpu``; skipped without a CUDA device."""

import pytest
import torch

from conftest import tiny_config
from minichatgpt.nn import Actor, RewardModel
from minichatgpt.trainer.strategies import NaiveStrategy

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

VOCAB = 77
WIDE = dict(tiny_config("llama", VOCAB), hidden_size=256, intermediate_size=1024, num_attention_heads=4,
            num_key_value_heads=4)  # large enough that its weights dominate the allocator's counters


def frozen_models():
    torch.manual_seed(0)
    return Actor(config=WIDE).requires_grad_(False), RewardModel(config=WIDE).requires_grad_(False)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_frozen_models_visit_the_gpu_only_for_their_forward(precision):
    ids = torch.randint(3, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0)).cuda()
    mask = torch.ones_like(ids)
    resident = NaiveStrategy("cuda", precision=precision).prepare(*frozen_models())
    torch.cuda.synchronize()
    expected = [resident[0](ids, mask, 4).float(), resident[1](ids, mask).float()]
    del resident
    torch.cuda.empty_cache()

    base = torch.cuda.memory_allocated()
    reference, reward_model = NaiveStrategy("cuda", precision=precision, offload_frozen=True).prepare(*frozen_models())
    weights = sum(p.numel() * p.element_size() for m in (reference, reward_model) for p in m.parameters())
    assert torch.cuda.memory_allocated() - base < weights / 10  # nothing of them on the GPU yet
    inside = []
    reference.register_forward_pre_hook(lambda m, a: inside.append(({p.device.type for p in m.parameters()},
                                                                     torch.cuda.memory_allocated())))
    for model, want, args in ((reference, expected[0], (ids, mask, 4)), (reward_model, expected[1], (ids, mask))):
        out = model(*args)
        assert out.device.type == "cuda"
        torch.testing.assert_close(out.float(), want, rtol=0, atol=0)
        assert {p.device.type for p in model.parameters()} == {"cpu"}
        assert all(p.is_pinned() for p in model.parameters())
    devices, during = inside[0]
    assert devices == {"cuda"} and during - base > weights / 4  # the reference was on the GPU for its forward
    del out
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - base < weights / 10  # and left again
