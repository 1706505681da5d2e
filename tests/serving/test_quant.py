"""Quantized inference on CPU: 8-bit and 4-bit models generate and take less memory than full precision;
memory accounting; GPT-2's Conv1D conversion; loading with a LoRA adapter."""

import copy
import importlib.util

import pytest
import torch
from conftest import tiny_config

from minichatgpt.nn import apply_lora, load_model, load_tokenizer, merged_copy
from minichatgpt.serving.engine import GenerationOptions, encode_chat, generate_text
from minichatgpt.serving.loading import load_for_inference
from minichatgpt.serving.quant import convert_conv1d, linear_layers, model_memory_bytes, quantize_model

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None,
                                   reason="torchao (the CPU quantization backend) is not installed")
needs_bitsandbytes = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                        reason="bitsandbytes is not installed")


def _quantized(model, mode, backend):
    return quantize_model(copy.deepcopy(model), mode, "cpu", backend=backend)


def _check_generates(model, tokenizer):
    prompt_ids = encode_chat(tokenizer, [{"role": "user", "content": "describe the cat"}])
    text, finish, count = generate_text(model, tokenizer, prompt_ids,
                                        GenerationOptions(max_new_tokens=5, temperature=0.0))
    assert count >= 1 and finish in ("length", "stop") and isinstance(text, str)
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids])).logits
    assert torch.isfinite(logits.float()).all()


def _assert_smaller_and_generating(model, tokenizer, backend):
    full = model_memory_bytes(model)
    eight = _quantized(model, "8bit", backend)
    four = _quantized(model, "4bit", backend)
    for quantized in (eight, four):
        _check_generates(quantized, tokenizer)
    assert model_memory_bytes(four) < model_memory_bytes(eight) < full


@needs_torchao
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_torchao_models_generate_and_are_smaller(tiny_model_dirs, family):
    model, tokenizer = load_model(tiny_model_dirs[family]).eval(), load_tokenizer(tiny_model_dirs[family])
    _assert_smaller_and_generating(model, tokenizer, "torchao")


@needs_bitsandbytes
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_bitsandbytes_models_generate_and_are_smaller(word_tokenizer, family):
    """The CUDA backend's code path, run on bitsandbytes' CPU kernels (64 wide: their 4-bit block)."""
    config = tiny_config(family, len(word_tokenizer))
    config.update({"llama": {"hidden_size": 64, "intermediate_size": 128}, "gpt2": {"n_embd": 64}}[family])
    torch.manual_seed(0)
    _assert_smaller_and_generating(load_model(config=config).eval(), word_tokenizer, "bitsandbytes")


@needs_torchao
def test_quantized_logits_stay_close(tiny_model_dirs):
    model = load_model(tiny_model_dirs["llama"]).eval()
    ids = torch.arange(3, 20).unsqueeze(0)  # (1, T)
    with torch.no_grad():
        reference = model(ids).logits
        scale = reference.abs().max()
        for mode, tolerance in (("8bit", 0.05), ("4bit", 0.3)):
            logits = _quantized(model, mode, "torchao")(ids).logits.float()
            assert (logits - reference).abs().max() < tolerance * scale, mode


def test_memory_counts_parameters_and_buffers_once(tiny_model_dirs):
    model = load_model(tiny_model_dirs["gpt2"])
    params = {id(p): p for p in model.parameters()}.values()  # tied embeddings appear once
    expected = sum(p.numel() * p.element_size() for p in params) + \
        sum(b.numel() * b.element_size() for b in model.buffers())
    assert model_memory_bytes(model) == expected
    assert model_memory_bytes(model.to(torch.bfloat16)) * 2 == expected


def test_conv1d_becomes_an_equal_linear(tiny_model_dirs):
    model = load_model(tiny_model_dirs["gpt2"]).eval()
    converted = convert_conv1d(copy.deepcopy(model))
    assert len(linear_layers(converted)) == 4 * model.config.n_layer  # c_attn, c_proj, c_fc, mlp c_proj
    ids = torch.arange(3, 20).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, model(ids).logits)


def test_unknown_mode_is_an_error(tiny_model_dirs):
    with pytest.raises(ValueError, match="8bit"):
        quantize_model(load_model(tiny_model_dirs["llama"]), "3bit", "cpu")


@needs_torchao
def test_load_for_inference_merges_lora_then_quantizes(tiny_model_dirs, tmp_path):
    base_dir = tiny_model_dirs["llama"]
    torch.manual_seed(0)
    lora_model = apply_lora(load_model(base_dir), rank=4, task_type="CAUSAL_LM")
    with torch.no_grad():  # a trained adapter: B is zero at initialization, so give it values
        for name, param in lora_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    lora_model.save_pretrained(str(tmp_path / "adapter"))
    merged = merged_copy(lora_model).eval()

    ids = torch.arange(3, 20).unsqueeze(0)
    loaded, _ = load_for_inference(base_dir, lora=str(tmp_path / "adapter"), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, merged(ids).logits)
        base_logits = load_model(base_dir)(ids).logits
        assert not torch.allclose(loaded(ids).logits, base_logits)  # the adapter changed something

    quantized, tokenizer = load_for_inference(base_dir, lora=str(tmp_path / "adapter"), quant="8bit", device="cpu")
    assert model_memory_bytes(quantized) < model_memory_bytes(merged)
    _check_generates(quantized, tokenizer)
