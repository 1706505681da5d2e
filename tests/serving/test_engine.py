"""Inference generation: greedy equals Hugging Face greedy, streaming text equals whole decoding,
sampling keeps to the nucleus, stop strings and the context window end replies."""

import os

import pytest
import torch
from conftest import SHARED, requires_shared

from minichatgpt.nn import load_model, load_tokenizer
from minichatgpt.nn.text_stream import held_back as _held_back
from minichatgpt.serving.engine import (
    GenerationOptions,
    IncrementalDecoder,
    PromptTooLongError,
    context_window,
    encode_chat,
    fit_messages,
    generate_text,
    sample_next_token,
    stream_text,
)

GPT2_TOKENIZER = os.path.join(SHARED, "tokenizers", "gpt2")


def _load(directory):
    return load_model(directory).eval(), load_tokenizer(directory)


def _greedy_without_cache(model, ids, n):
    """Reference: n greedy steps, each a full forward pass over the whole sequence."""
    ids = list(ids)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-n:]


@pytest.mark.parametrize("family", ["gpt2", "opt", "bloom", "llama"])
def test_greedy_stream_equals_full_recompute(tiny_model_dirs, family):
    model, tokenizer = _load(tiny_model_dirs[family])
    prompt_ids = encode_chat(tokenizer, [{"role": "user", "content": "describe the cat"}])
    n = 10
    with torch.no_grad():
        expected = _greedy_without_cache(model, prompt_ids, n)
    options = GenerationOptions(max_new_tokens=n, temperature=0.0)
    deltas = list(stream_text(model, tokenizer, prompt_ids, options, stop_ids=()))
    # The reply decoded in context: the prompt's last tokens give the first word its leading space.
    tail = prompt_ids[-4:]
    full = tokenizer.decode(tail + expected, skip_special_tokens=True)
    assert "".join(d.text for d in deltas) == full[len(tokenizer.decode(tail, skip_special_tokens=True)):]
    assert deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == n
    assert all(d.finish_reason is None for d in deltas[:-1])


@requires_shared(GPT2_TOKENIZER)
def test_incremental_decoder_matches_whole_decode_for_multibyte_text():
    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(GPT2_TOKENIZER)
    text = " Ünïcödé: 你好，世界 🤖🚀 — naïve café, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢!"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > len(text.split())  # characters really are split over several byte-level tokens
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == tokenizer.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)


def test_sample_next_token_greedy_and_nucleus():
    logits = torch.log(torch.tensor([0.1, 0.5, 0.3, 0.1]))
    assert sample_next_token(logits, temperature=0.0, top_p=1.0) == 1
    assert sample_next_token(logits, temperature=1.0, top_p=1e-6) == 1  # the top token always stays
    generator = torch.Generator().manual_seed(0)
    drawn = {sample_next_token(logits, 1.0, 0.7, generator) for _ in range(300)}
    assert drawn == {1, 2}  # 0.5 + 0.3 reaches 0.7; tokens outside the nucleus never appear
    first = [sample_next_token(logits, 1.0, 1.0, torch.Generator().manual_seed(7)) for _ in range(5)]
    assert len(set(first)) == 1  # the same seed draws the same token


def test_seeded_sampling_repeats(tiny_model_dirs):
    model, tokenizer = _load(tiny_model_dirs["gpt2"])
    prompt_ids = encode_chat(tokenizer, [{"role": "user", "content": "describe the dog"}])
    options = GenerationOptions(max_new_tokens=12, temperature=1.0, seed=123)
    assert generate_text(model, tokenizer, prompt_ids, options) == generate_text(model, tokenizer, prompt_ids, options)


def test_held_back_is_the_longest_stop_prefix():
    assert _held_back("the end is ne", ["near", "x"]) == len("ne")
    assert _held_back("abc", ["zzz"]) == 0
    assert _held_back("abc", []) == 0


def test_stop_string_cuts_the_reply(tiny_model_dirs):
    model, tokenizer = _load(tiny_model_dirs["gpt2"])
    prompt_ids = encode_chat(tokenizer, [{"role": "user", "content": "describe the cat"}])
    greedy = GenerationOptions(max_new_tokens=12, temperature=0.0)
    full, _, _ = generate_text(model, tokenizer, prompt_ids, greedy)
    words = full.split()
    stop = words[len(words) // 2]
    text, finish, _ = generate_text(model, tokenizer, prompt_ids,
                                    GenerationOptions(max_new_tokens=12, temperature=0.0, stop=(stop,)))
    assert finish == "stop"
    assert text == full[:full.index(stop)]


def test_eos_ends_the_reply_and_is_not_shown(tiny_model_dirs):
    model, tokenizer = _load(tiny_model_dirs["gpt2"])
    prompt_ids = encode_chat(tokenizer, [{"role": "user", "content": "describe the cat"}])
    with torch.no_grad():
        first = int(model(torch.tensor([prompt_ids])).logits[0, -1].argmax())
    deltas = list(stream_text(model, tokenizer, prompt_ids, GenerationOptions(temperature=0.0), stop_ids={first}))
    assert (deltas[-1].finish_reason, deltas[-1].completion_tokens) == ("stop", 1)
    assert "".join(d.text for d in deltas) == ""


def test_reply_is_clipped_to_the_context_window(tiny_model_dirs):
    model, tokenizer = _load(tiny_model_dirs["gpt2"])
    window = context_window(model, tokenizer)
    prompt_ids = [tokenizer.convert_tokens_to_ids("cat")] * (window - 3)
    _, finish, count = generate_text(model, tokenizer, prompt_ids,
                                     GenerationOptions(max_new_tokens=50, temperature=0.0))
    assert count <= 3 and finish in ("length", "stop")
    with pytest.raises(PromptTooLongError):
        generate_text(model, tokenizer, prompt_ids + [5] * 3, GenerationOptions())


def test_fit_messages_drops_oldest_turns_first(word_tokenizer):
    turns = []
    for obj in ["cat", "dog", "apple", "river"]:
        turns += [{"role": "user", "content": f"describe the {obj}"},
                  {"role": "assistant", "content": f"the {obj} is quiet ."}]
    system = [{"role": "system", "content": "describe the city"}]
    messages = system + turns + [{"role": "user", "content": "describe the rope"}]
    full = len(encode_chat(word_tokenizer, messages))
    kept, ids = fit_messages(word_tokenizer, messages, full)
    assert kept == messages and ids == encode_chat(word_tokenizer, messages)
    kept, ids = fit_messages(word_tokenizer, messages, full - 1)
    assert kept[0] == system[0] and kept[1]["role"] == "user"  # system kept, history starts at a question
    assert kept[-1] == messages[-1] and len(ids) <= full - 1
    assert kept[1:] == messages[-len(kept) + 1:]  # a suffix of the conversation: only the oldest went
    with pytest.raises(PromptTooLongError):
        fit_messages(word_tokenizer, messages, 3)
