"""PromptDataset: prompt formats, raw prompt text per item, left truncation and bad records."""

import pytest
import torch

from minichatgpt.data import DataError, PromptDataset
from minichatgpt.demo import prompt_records
from minichatgpt.tokenizer import format_prompt


def user(text):
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("record,messages", [
    ({"instruction": "Name a color."}, user("Name a color.")),
    ({"instruction": "Translate.", "input": "Hello"}, user("Translate.\n\nHello")),
    ({"instruction": "Translate.", "input": ""}, user("Translate.")),
    ({"prompt": "Name a color."}, user("Name a color.")),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                   {"role": "user", "content": "Name a color."}]},
     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
      {"role": "user", "content": "Name a color."}]),
    ({"conversations": [{"from": "human", "value": "Name a color."}]}, user("Name a color.")),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Name a color.\n\nAssistant: Red."},
     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
      {"role": "user", "content": "Name a color."}]),
])
def test_formats(gpt2_tokenizer, record, messages):
    tok = gpt2_tokenizer
    dataset = PromptDataset([record], tok)
    assert dataset.messages == [messages] and dataset.prompts == [messages[-1]["content"]]
    assert dataset[0]["input_ids"].tolist() == tok(format_prompt(tok, messages))["input_ids"]


def test_raw_prompt_text_formats_back_to_the_item(gpt2_tokenizer):
    """``prompts[i]`` is unformatted: formatting it as a user turn gives the item's ids again."""
    tok = gpt2_tokenizer
    dataset = PromptDataset([{"instruction": "Translate.", "input": "Hello"}, {"prompt": "Hi"}], tok)
    assert dataset.prompts == ["Translate.\n\nHello", "Hi"]
    for text, item in zip(dataset.prompts, dataset):
        assert item["input_ids"].tolist() == tok(format_prompt(tok, [{"role": "user", "content": text}]))["input_ids"]


def test_hh_prompt_ends_with_the_assistant_header(gpt2_tokenizer):
    dataset = PromptDataset([{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.", "rejected": "x"}], gpt2_tokenizer)
    assert gpt2_tokenizer.decode(dataset[0]["input_ids"]) == "Human: Hi\n\nAssistant:"
    assert dataset.prompts == ["Hi"]


def test_self_instruct_gives_one_prompt_per_instance(word_tokenizer):
    record = {"instruction": "describe the", "instances": [{"input": "cat", "output": "x"}, {"input": "soup"}]}
    dataset = PromptDataset([record], word_tokenizer)
    assert [m[0]["content"] for m in dataset.messages] == ["describe the\n\ncat", "describe the\n\nsoup"]


def test_chat_template_prompt(chat_tokenizer):
    dataset = PromptDataset([{"instruction": "describe the cat"}], chat_tokenizer)
    assert chat_tokenizer.convert_ids_to_tokens(dataset[0]["input_ids"]) == "Human : describe the cat Assistant :".split()


def test_demo_records(word_tokenizer):
    records = prompt_records(8)
    dataset = PromptDataset(records, word_tokenizer, max_len=32)
    assert len(dataset) == 8 and len(dataset.prompts) == 8
    assert dataset.prompts == [record["instruction"] for record in records]


@pytest.mark.parametrize("name", ["prompts.jsonl", "prompts.csv", "prompts.parquet", "prompts.csv.gz"])
def test_files(word_tokenizer, write, name):
    records = prompt_records(5)
    dataset = PromptDataset(write(name, records), word_tokenizer, max_datasets_size=4)
    expected = PromptDataset(records[:4], word_tokenizer)
    assert dataset.prompts == expected.prompts
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(dataset, expected))


def test_long_prompt_keeps_its_end(word_tokenizer):
    record = {"instruction": "describe the cat " * 10 + "and the soup"}
    (full,) = PromptDataset([record], word_tokenizer)
    (item,) = PromptDataset([record], word_tokenizer, max_len=7)
    assert torch.equal(item["input_ids"], full["input_ids"][-7:])
    assert word_tokenizer.convert_ids_to_tokens(item["input_ids"])[-2:] == ["Assistant", ":"]


def test_long_prompt_keeps_the_leading_special_token(bos_tokenizer):
    record = {"instruction": "describe the cat " * 10}
    (full,) = PromptDataset([record], bos_tokenizer)
    (item,) = PromptDataset([record], bos_tokenizer, max_len=6)
    assert item["input_ids"].tolist() == [bos_tokenizer.bos_token_id] + full["input_ids"][-5:].tolist()


@pytest.mark.parametrize("record,message", [
    ({"instruction": 3}, "field 'instruction' must be a string, got int"),
    ({"instruction": "x", "input": ["y"]}, "field 'input' must be a string, got list"),
    ({"prompt": None, "text": "y"}, "unknown record format (fields: 'prompt', 'text'); accepted field sets: "
                                    "{instruction (+ input | instances)}; {prompt}; {messages}; {conversations}; "
                                    "{chosen as an hh-rlhf dialogue}"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
     "field 'messages' must end with a user turn, got 'assistant'"),
    ({"chosen": "no dialogue here"}, "field 'chosen' is not an hh-rlhf dialogue (no '\\n\\nAssistant:' turn)"),
    ({"instruction": "x", "instances": ["y"]}, "field 'instances[0]' must be an object, got string"),
])
def test_bad_record_names_file_row_and_field(word_tokenizer, write, record, message):
    path = write("prompts.jsonl", [{"instruction": "x"}, record])
    with pytest.raises(DataError) as info:
        PromptDataset(path, word_tokenizer)
    assert str(info.value) == f"{path}:2: {message}"
