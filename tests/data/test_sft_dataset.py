"""SFTDataset: every record format, labels only on response tokens, truncation and bad records."""

import copy

import pytest
import torch

from minichatgpt.data import DataError, SFTDataset
from minichatgpt.demo import sft_records
from minichatgpt.functional import IGNORE_INDEX
from minichatgpt.tokenizer import format_prompt, format_response


def labelled(item):
    """The ids that carry a loss."""
    return item["input_ids"][item["labels"] != IGNORE_INDEX]


def assert_labels_match_ids(item):
    mask = item["labels"] != IGNORE_INDEX
    assert torch.equal(item["labels"][mask], item["input_ids"][mask])


ALPACA = {"instruction": "Name a primary color.", "input": "", "output": "Red is a primary color."}


@pytest.mark.parametrize("record,user,response", [
    (ALPACA, "Name a primary color.", "Red is a primary color."),
    ({"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
     "Translate to French.\n\nGood morning", "Bonjour"),
    ({"prompt": "What is 2 + 2?", "completion": "4."}, "What is 2 + 2?", "4."),
    ({"prompt": "What is 2 + 2?", "response": "Four."}, "What is 2 + 2?", "Four."),
    ({"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]},
     "Hi there", "Hello!"),
    ({"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello!"}]},
     "Hi there", "Hello!"),
    ({"instruction": "Sort the words.", "instances": [{"input": "b a", "output": "a b"}]}, "Sort the words.\n\nb a",
     "a b"),
])
def test_single_turn_formats_label_exactly_the_response(gpt2_tokenizer, record, user, response):
    tok = gpt2_tokenizer
    (item,) = SFTDataset([record], tok)
    prompt = format_prompt(tok, [{"role": "user", "content": user}])
    assert tok.decode(item["input_ids"]) == prompt + format_response(tok, response)
    assert tok.decode(labelled(item)) == " " + response + tok.eos_token
    assert_labels_match_ids(item)
    assert item["input_ids"].dtype == item["labels"].dtype == torch.long


def test_prompt_and_response_are_tokenized_apart(gpt2_tokenizer):
    """The label boundary sits exactly after the prompt's own tokens, whatever BPE would merge."""
    tok = gpt2_tokenizer
    (item,) = SFTDataset([ALPACA], tok)
    prompt_ids = tok(format_prompt(tok, [{"role": "user", "content": ALPACA["instruction"]}]))["input_ids"]
    n = len(prompt_ids)
    assert item["input_ids"][:n].tolist() == prompt_ids
    assert (item["labels"][:n] == IGNORE_INDEX).all() and (item["labels"][n:] != IGNORE_INDEX).all()
    assert item["input_ids"][-1].item() == tok.eos_token_id


def test_plain_multi_turn_trains_every_assistant_turn(gpt2_tokenizer):
    tok = gpt2_tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Goodbye."}]
    (item,) = SFTDataset([{"messages": messages}], tok)
    eos = tok.eos_token
    assert tok.decode(item["input_ids"]) == (
        f"System: Be brief.\n\nHuman: Hi\n\nAssistant: Hello.{eos}\n\nHuman: Bye\n\nAssistant: Goodbye.{eos}")
    assert tok.decode(labelled(item)) == f" Hello.{eos} Goodbye.{eos}"


def test_assistant_turn_before_any_user_turn_is_context(gpt2_tokenizer):
    tok = gpt2_tokenizer
    turns = [{"from": "gpt", "value": "Welcome."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey."}]
    (item,) = SFTDataset([{"conversations": turns}], tok)
    assert tok.decode(labelled(item)) == f" Hey.{tok.eos_token}"
    assert tok.decode(item["input_ids"]).startswith("Assistant: Welcome.")


def test_chat_template_path(chat_tokenizer):
    tok = chat_tokenizer
    messages = [{"role": "user", "content": "describe the cat"}, {"role": "assistant", "content": "the cat is gentle ."},
                {"role": "user", "content": "describe the soup"}, {"role": "assistant", "content": "the soup is sweet ."}]
    (item,) = SFTDataset([{"messages": messages}], tok)
    # The pieces concatenate to the template's rendering of the whole conversation.
    whole = tok.apply_chat_template(messages, tokenize=False)
    assert item["input_ids"].tolist() == tok(whole.rstrip(), add_special_tokens=False)["input_ids"]
    tokens = tok.convert_ids_to_tokens(labelled(item))
    assert tokens == "the cat is gentle . <eos> the soup is sweet . <eos>".split()
    assert_labels_match_ids(item)


def test_template_that_rewrites_earlier_turns_trains_the_last_turn(chat_tokenizer):
    from minichatgpt.demo import build_word_tokenizer

    tok = build_word_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if loop.last %}Human : {{ m['content'] }} {% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}Assistant : {% endif %}")
    messages = [{"role": "user", "content": "describe the cat"}, {"role": "assistant", "content": "the cat is dull ."},
                {"role": "user", "content": "describe the soup"}, {"role": "assistant", "content": "the soup is sweet ."}]
    with pytest.warns(UserWarning, match="last assistant turn only"):
        (item,) = SFTDataset([{"messages": messages}], tok)
    assert tok.convert_ids_to_tokens(labelled(item)) == "the soup is sweet . <eos>".split()
    assert tok.convert_ids_to_tokens(item["input_ids"])[:4] == "Human : describe the".split()


def test_leading_special_token_appears_once(bos_tokenizer):
    tok = bos_tokenizer
    bos = tok.bos_token_id
    (item,) = SFTDataset([{"instruction": "describe the cat", "output": "the cat is gentle ."}], tok)
    ids = item["input_ids"].tolist()
    assert ids[0] == bos and ids.count(bos) == 1
    # A chat template that writes the BOS itself does not get a second one.
    templated = copy.deepcopy(tok)  # the session fixture itself stays template-free
    templated.chat_template = "<bos>{% for m in messages %}Human : {{ m['content'] }} {% endfor %}Assistant : "
    (item,) = SFTDataset([{"instruction": "describe the cat", "output": "the cat is gentle ."}], templated)
    assert item["input_ids"].tolist().count(bos) == 1 and item["input_ids"][0].item() == bos


def test_demo_records(word_tokenizer):
    records = sft_records(20)
    dataset = SFTDataset(records, word_tokenizer, max_len=64)
    assert len(dataset) == 20 and dataset.num_truncated_away == 0
    for record, item in zip(records, dataset):
        assert word_tokenizer.convert_ids_to_tokens(labelled(item)) == record["output"].split() + ["<eos>"]


@pytest.mark.parametrize("name", ["sft.json", "sft.jsonl", "sft.csv", "sft.parquet", "sft.jsonl.gz", "sft.csv.gz"])
def test_files_give_the_same_items_as_the_list(word_tokenizer, write, name):
    records = [{"instruction": r["instruction"], "input": "", "output": r["output"]} for r in sft_records(6)]
    expected = SFTDataset(records, word_tokenizer)
    dataset = SFTDataset(write(name, records), word_tokenizer, max_datasets_size=4)
    assert len(dataset) == 4
    for a, b in zip(dataset, expected):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_chat_records_from_parquet(word_tokenizer, write):
    records = [{"messages": [{"role": "user", "content": "describe the cat"},
                             {"role": "assistant", "content": "the cat is lovely ."}]}]
    (item,) = SFTDataset(write("chat.parquet", records), word_tokenizer)
    assert word_tokenizer.convert_ids_to_tokens(labelled(item)) == "the cat is lovely . <eos>".split()


# ---------------------------------------------------------------------------------------------
# truncation
# ---------------------------------------------------------------------------------------------
def test_long_response_loses_its_end(word_tokenizer):
    record = {"instruction": "describe the cat", "output": "the cat is gentle , lovely and cheerful ."}
    (full,) = SFTDataset([record], word_tokenizer)
    prompt_len = int((full["labels"] == IGNORE_INDEX).sum())
    (item,) = SFTDataset([record], word_tokenizer, max_len=prompt_len + 3)
    assert torch.equal(item["input_ids"], full["input_ids"][:prompt_len + 3])
    assert torch.equal(item["labels"], full["labels"][:prompt_len + 3])


def test_record_whose_response_is_truncated_away_is_dropped_and_counted(word_tokenizer):
    short = {"instruction": "describe the cat", "output": "the cat is gentle ."}
    long = {"instruction": "describe the cat " * 10, "output": "the cat is gentle ."}
    dataset = SFTDataset([short, long, short], word_tokenizer, max_len=16)
    assert len(dataset) == 2 and dataset.num_truncated_away == 1
    with pytest.raises(DataError, match=r"^<list>: no example left: all 1 responses were truncated away by max_len=16"):
        SFTDataset([long], word_tokenizer, max_len=16)


def test_bad_max_len(word_tokenizer):
    with pytest.raises(ValueError, match="max_len"):
        SFTDataset([ALPACA], word_tokenizer, max_len=1)


# ---------------------------------------------------------------------------------------------
# bad records: the message names the file, the row or line, and the field
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("record,message", [
    ({"instruction": "x"}, "missing field 'output'"),
    ({"instruction": "x", "output": 3}, "field 'output' must be a string, got int"),
    ({"instruction": "x", "output": None}, "field 'output' must be a string, got null"),
    ({"instruction": ["x"], "output": "y"}, "field 'instruction' must be a string, got list"),
    ({"instruction": "x", "input": 1.5, "output": "y"}, "field 'input' must be a string, got float"),
    ({"instruction": "x", "output": True}, "field 'output' must be a string, got bool"),
    ({"instruction": "x", "instances": [{"input": "y"}]}, "missing field 'instances[0].output'"),
    ({"instruction": "x", "instances": []}, "field 'instances' is empty"),
    ({"prompt": "x"}, "missing field 'completion' or 'response'"),
    ({"messages": "hi"}, "field 'messages' must be a list, got string"),
    ({"messages": []}, "field 'messages' is empty"),
    ({"messages": ["hi"]}, "field 'messages[0]' must be an object, got string"),
    ({"messages": [{"content": "hi"}]}, "missing field 'messages[0].role' or 'messages[0].from'"),
    ({"messages": [{"role": "user"}]}, "missing field 'messages[0].content'"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "field 'messages[0].role' must be one of 'user', 'assistant'"),
    ({"conversations": [{"from": "human", "value": 7}]}, "field 'conversations[0].value' must be a string, got int"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "field 'messages' has no assistant turn after a user turn"),
    ({"instruction": "x\ud800", "output": "y"}, "field 'instruction' is not valid Unicode text"),
])
def test_bad_record_names_file_row_and_field(word_tokenizer, write, record, message):
    path = write("data.jsonl", [ALPACA, record])
    with pytest.raises(DataError) as info:
        SFTDataset(path, word_tokenizer)
    assert str(info.value).startswith(f"{path}:2: {message}")


def test_bad_record_in_json_array_names_the_row(word_tokenizer, write):
    path = write("data.json", [ALPACA, ALPACA, ALPACA, ALPACA, {"instruction": "x", "output": 5}])
    with pytest.raises(DataError, match=r"data\.json:row 5: field 'output' must be a string, got int$"):
        SFTDataset(path, word_tokenizer)


def test_unknown_format_lists_the_accepted_field_sets(word_tokenizer, write):
    path = write("data.csv", [{"question": "x", "answer": "y"}])
    with pytest.raises(DataError) as info:
        SFTDataset(path, word_tokenizer)
    message = str(info.value)
    assert message.startswith(f"{path}:row 1: unknown record format (fields: 'answer', 'question')")
    for field_set in ("{instruction, output | instances (+ input)}", "{prompt, completion | response}",
                      "{messages}", "{conversations}"):
        assert field_set in message


def test_chat_records_in_csv_are_a_type_error(word_tokenizer, write):
    path = write("data.csv", [{"messages": "[]"}])
    with pytest.raises(DataError, match=r"data\.csv:row 1: field 'messages' must be a list, got string"):
        SFTDataset(path, word_tokenizer)


def test_template_failure_is_a_data_error():
    from minichatgpt.demo import build_word_tokenizer

    tok = build_word_tokenizer()
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(DataError, match=r"^<list>:row 1: the chat template rejected this conversation \(roles must"):
        SFTDataset([ALPACA], tok)
