"""load_model, to_config, read_checkpoint_tensor and load_tokenizer on tiny models and tokenizers saved
to temporary directories (nothing downloaded)."""

import copy
import json
import os

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, PreTrainedTokenizerFast

from conftest import tiny_config
from minichatgpt.nn import load_model, load_tokenizer
from minichatgpt.nn.loading import read_checkpoint_tensor, to_config


def saved_model(family, path):
    torch.manual_seed(0)
    model = load_model(config=tiny_config(family))
    model.save_pretrained(str(path))
    return model


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key, value in sa.items():
        assert torch.equal(sb[key], value), key


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_model_built_from_a_config_dict_round_trips_through_its_saved_directory(family, tmp_path):
    config = tiny_config(family)
    given = copy.deepcopy(config)
    model = saved_model(family, tmp_path)
    assert config == given  # the caller's dict is not consumed
    assert model.config.model_type == family and model.config.num_hidden_layers == 2
    again = load_model(str(tmp_path))
    assert type(again) is type(model) and next(again.parameters()).dtype == torch.float32
    assert_same_weights(again, model)
    half = load_model(str(tmp_path), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(half.state_dict()[key], value.to(torch.bfloat16)), key


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_backbone_head_loads_the_causal_lm_weights_without_the_lm_head(family, tmp_path):
    model = saved_model(family, tmp_path)
    backbone = load_model(str(tmp_path), head="backbone")
    prefix = model.base_model_prefix  # "transformer" (GPT-2), "model" (LLaMA)
    assert not hasattr(backbone, "lm_head")
    full = model.state_dict()
    for key, value in backbone.state_dict().items():
        assert torch.equal(full[f"{prefix}.{key}"], value), key
    ids = torch.tensor([[5, 6, 7, 8]])
    model.eval()  # built from a config, it is in training mode (dropout)
    with torch.no_grad():
        hidden = backbone(input_ids=ids).last_hidden_state
        expected = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(hidden, expected)


def test_load_model_needs_a_path_or_a_config():
    with pytest.raises(ValueError, match="either pretrained= or config="):
        load_model()


def test_to_config_accepts_an_object_a_dict_or_a_path(tmp_path):
    assert to_config(None) is None
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2)
    assert to_config(config) is config
    from_dict = to_config({"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2})
    assert isinstance(from_dict, GPT2Config) and from_dict.to_dict() == config.to_dict()
    config.save_pretrained(str(tmp_path))
    from_path = to_config(str(tmp_path)).to_dict()
    assert from_path.pop("_name_or_path") == str(tmp_path)
    assert from_path == {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}


def test_read_checkpoint_tensor_reads_one_tensor_of_a_single_file(tmp_path):
    model = saved_model("llama", tmp_path)
    os.remove(tmp_path / "config.json")  # no model can be built from the directory now
    name = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(read_checkpoint_tensor(str(tmp_path), name), model.state_dict()[name])
    assert read_checkpoint_tensor(str(tmp_path), "model.no_such.weight") is None
    assert read_checkpoint_tensor(str(tmp_path / "empty"), name) is None  # no safetensors file at all


def test_read_checkpoint_tensor_follows_the_index_of_a_sharded_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = load_model(config=tiny_config("llama"))
    model.save_pretrained(str(tmp_path), max_shard_size="20KB")
    with open(tmp_path / "model.safetensors.index.json") as f:
        weight_map = json.load(f)["weight_map"]
    assert len(set(weight_map.values())) > 1, "the checkpoint should be sharded"
    state = model.state_dict()
    for name in weight_map:
        assert torch.equal(read_checkpoint_tensor(str(tmp_path), name), state[name]), name
    assert read_checkpoint_tensor(str(tmp_path), "model.no_such.weight") is None


def saved_tokenizer(path, specials, **roles):
    """A word-level tokenizer over a few words plus ``specials``, saved to ``path``."""
    words = ["hello", "world"] + specials
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=roles.get("unk_token")))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(specials)
    PreTrainedTokenizerFast(tokenizer_object=core, **roles).save_pretrained(str(path))
    return str(path)


@pytest.mark.parametrize("specials, roles, expected_pad", [
    (["<eos>", "<|endoftext|>"], {"eos_token": "<eos>"}, "<|endoftext|>"),  # no pad: a distinct one exists
    (["<eos>", "<|endoftext|>"], {"eos_token": "<eos>", "pad_token": "<eos>"}, "<|endoftext|>"),  # pad == EOS
    (["<eos>", "<unk>"], {"eos_token": "<eos>", "unk_token": "<unk>"}, "<unk>"),  # then the unknown token
    (["<eos>"], {"eos_token": "<eos>"}, "<eos>"),  # then EOS itself
    (["<|endoftext|>"], {"eos_token": "<|endoftext|>"}, "<|endoftext|>"),
])
def test_load_tokenizer_pad_fallback(specials, roles, expected_pad, tmp_path):
    tokenizer = load_tokenizer(saved_tokenizer(tmp_path, specials, **roles))
    assert tokenizer.eos_token == roles["eos_token"] and tokenizer.pad_token == expected_pad
    assert tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids(expected_pad)


def test_load_tokenizer_chat_eos_and_explicit_overrides(tmp_path):
    path = saved_tokenizer(tmp_path, ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<pad>"],
                           eos_token="<|im_start|>")
    chat = load_tokenizer(path)  # a GGUF-style chat model declaring <|im_start|> as EOS
    assert (chat.eos_token, chat.pad_token) == ("<|im_end|>", "<|endoftext|>")
    explicit = load_tokenizer(path, eos_token="<|endoftext|>", pad_token="<pad>")
    assert (explicit.eos_token, explicit.pad_token) == ("<|endoftext|>", "<pad>")


@pytest.mark.parametrize("loader", [load_model, load_tokenizer])
@pytest.mark.parametrize("missing", ["{tmp}/no-model-here", "./no-model-here/x", "{tmp}/weights.gguf"])
def test_a_missing_path_is_an_error_naming_it(loader, missing, tmp_path):
    path = missing.format(tmp=tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        loader(path)
    assert repr(path) in str(error.value)
