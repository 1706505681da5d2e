"""Shared fixtures: tiny models of each family saved to disk, and the demo word tokenizer.

Every model is built from a config (2 layers, 32-64 wide), saved with ``save_pretrained`` and loaded
back through the library's real loading path; nothing is downloaded.
"""

import os
import warnings

# Before anything imports huggingface_hub, which reads these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from minichatgpt.demo import build_word_tokenizer  # noqa: E402
warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
SHARED_DATA = os.path.join(SHARED, "data")
SMOLLM2_GGUF = os.path.join(SHARED, "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")

FAMILIES = ("gpt2", "opt", "bloom", "llama")


def tiny_config(family: str, vocab_size: int = 77) -> dict:
    """Config dict of a 2-layer model of ``family`` with ``vocab_size`` tokens (ids 0 pad, 2 EOS)."""
    common = {"vocab_size": vocab_size, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 2}
    return {
        "gpt2": dict(model_type="gpt2", n_layer=2, n_embd=32, n_head=2, n_positions=128, **common),
        "opt": dict(model_type="opt", num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=2,
                    word_embed_proj_dim=32, max_position_embeddings=128, **common),
        "bloom": dict(model_type="bloom", n_layer=2, hidden_size=32, n_head=2, **common),
        "llama": dict(model_type="llama", num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, **common),
    }[family]


def pad_left(prompts, pad_id: int = 0):
    """(B, P) ids and attention mask of token-id lists left-padded to the longest."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@pytest.fixture(scope="session")
def word_tokenizer():
    return build_word_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, word_tokenizer):
    """{family: directory} of tiny causal LMs saved with ``save_pretrained`` (plus the tokenizer)."""
    from minichatgpt.nn import load_model

    dirs = {}
    for family in FAMILIES:
        torch.manual_seed(0)
        model = load_model(config=tiny_config(family, len(word_tokenizer)))
        path = str(tmp_path_factory.mktemp(f"tiny-{family}"))
        model.save_pretrained(path)
        word_tokenizer.save_pretrained(path)
        dirs[family] = path
    return dirs


def scramble_weights(model, std: float = 0.5):
    """Redraw ``model``'s matrices at a larger scale (seed 0), in place: at the default scale a tiny random
    model mostly repeats the last prompt token, so greedy replies could not tell tokens apart."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
    return model


def requires_shared(path: str):
    return pytest.mark.skipif(not os.path.exists(path), reason=f"{path} is absent (shared/ is not in a fresh clone)")


def policy_log_probs(model, rollout) -> torch.Tensor:
    """(B, A) log-probs of a rollout's response tokens recomputed by one forward over its whole sequences
    (positions counting real tokens only), zero past each response's end: what generate() must return."""
    from minichatgpt.nn import generation

    A = rollout.action_mask.size(1)
    kwargs = {"position_ids": generation.position_ids_from_mask(rollout.attention_mask)} \
        if generation.accepts_position_ids(model) else {}
    with torch.no_grad():
        logits = model(input_ids=rollout.sequences, attention_mask=rollout.attention_mask, **kwargs).logits
    return torch.log_softmax(logits[:, -A - 1:-1].float(), -1).gather(
        -1, rollout.sequences[:, -A:].unsqueeze(-1)).squeeze(-1) * rollout.action_mask
