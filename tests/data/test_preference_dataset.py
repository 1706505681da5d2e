"""PreferenceDataset: every pair format, hh-rlhf dialogue splitting, truncation and bad records."""

import pytest
import torch

from minichatgpt.data import DataError, PreferenceDataset
from minichatgpt.demo import preference_records
from minichatgpt.tokenizer import format_prompt, format_response


def user(text):
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("record,messages", [
    ({"prompt": "Is water wet?", "chosen": "Yes.", "rejected": "No."}, user("Is water wet?")),
    ({"instruction": "Fix the spelling.", "input": "freind", "chosen": "Yes.", "rejected": "No."},
     user("Fix the spelling.\n\nfreind")),
    ({"instruction": "Fix the spelling.", "chosen": "Yes.", "rejected": "No."}, user("Fix the spelling.")),
    ({"conversations": [{"from": "human", "value": "Is water wet?"}], "chosen": {"from": "gpt", "value": "Yes."},
      "rejected": {"from": "gpt", "value": "No."}}, user("Is water wet?")),
    ({"messages": [{"role": "user", "content": "Is water wet?"}], "chosen": {"role": "assistant", "content": "Yes."},
      "rejected": "No."}, user("Is water wet?")),
    ({"chosen": "\n\nHuman: Is water wet?\n\nAssistant: Yes.", "rejected": "\n\nHuman: Is water wet?\n\nAssistant: No."},
     user("Is water wet?")),
    ({"prompt": "\n\nHuman: Is water wet?\n\nAssistant:", "chosen": " Yes.", "rejected": " No."}, user("Is water wet?")),
])
def test_formats(gpt2_tokenizer, record, messages):
    tok = gpt2_tokenizer
    (item,) = PreferenceDataset([record], tok)
    prompt = format_prompt(tok, messages)
    assert tok.decode(item["chosen_input_ids"]) == prompt + format_response(tok, "Yes.")
    assert tok.decode(item["rejected_input_ids"]) == prompt + format_response(tok, "No.")
    assert item["chosen_input_ids"].dtype == torch.long


def test_hh_dialogue_round_trips_in_the_plain_format(gpt2_tokenizer):
    """The plain prompt format is hh-rlhf's own, so a dialogue decodes back to itself plus EOS."""
    tok = gpt2_tokenizer
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Tell me a joke.\n\nAssistant: Why did the chicken cross?"
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Tell me a joke.\n\nAssistant: No."
    (item,) = PreferenceDataset([{"chosen": chosen, "rejected": rejected}], tok)
    assert tok.decode(item["chosen_input_ids"]) == chosen[2:] + tok.eos_token
    assert tok.decode(item["rejected_input_ids"]) == rejected[2:] + tok.eos_token


def test_hh_dialogue_goes_through_the_chat_template(chat_tokenizer):
    tok = chat_tokenizer
    record = {"chosen": "\n\nHuman: describe the cat\n\nAssistant: the cat is dull .\n\nHuman: describe the soup"
                        "\n\nAssistant: the soup is sweet .",
              "rejected": "\n\nHuman: describe the cat\n\nAssistant: the cat is dull .\n\nHuman: describe the soup"
                          "\n\nAssistant: the soup is rusty ."}
    (item,) = PreferenceDataset([record], tok)
    assert tok.convert_ids_to_tokens(item["chosen_input_ids"]) == (
        "Human : describe the cat Assistant : the cat is dull . <eos> Human : describe the soup Assistant : "
        "the soup is sweet . <eos>").split()
    assert tok.convert_ids_to_tokens(item["rejected_input_ids"])[-3:] == ["rusty", ".", "<eos>"]


def test_hh_dialogues_with_different_prefixes_keep_their_own(gpt2_tokenizer):
    tok = gpt2_tokenizer
    chosen, rejected = "\n\nHuman: A?\n\nAssistant: yes", "\n\nHuman: B?\n\nAssistant: no"
    (item,) = PreferenceDataset([{"chosen": chosen, "rejected": rejected}], tok)
    assert tok.decode(item["rejected_input_ids"]) == rejected[2:] + tok.eos_token


def test_hh_empty_final_reply_is_kept(gpt2_tokenizer):
    tok = gpt2_tokenizer
    (item,) = PreferenceDataset([{"chosen": "\n\nHuman: Hi\n\nAssistant: ", "rejected": "\n\nHuman: Hi\n\nAssistant: Go."}],
                                tok)
    assert tok.decode(item["chosen_input_ids"]) == "Human: Hi\n\nAssistant: " + tok.eos_token


def test_demo_records(word_tokenizer):
    records = preference_records(10)
    dataset = PreferenceDataset(records, word_tokenizer, max_len=64)
    assert len(dataset) == 10
    for record, item in zip(records, dataset):
        tokens = word_tokenizer.convert_ids_to_tokens(item["chosen_input_ids"])
        assert tokens[-len(record["chosen"].split()) - 1:] == record["chosen"].split() + ["<eos>"]


@pytest.mark.parametrize("name", ["pairs.json", "pairs.jsonl", "pairs.csv", "pairs.parquet", "pairs.json.gz"])
def test_files(word_tokenizer, write, name):
    records = preference_records(5)
    expected = PreferenceDataset(records, word_tokenizer)
    dataset = PreferenceDataset(write(name, records), word_tokenizer, max_datasets_size=3)
    assert len(dataset) == 3
    for a, b in zip(dataset, expected):
        assert torch.equal(a["chosen_input_ids"], b["chosen_input_ids"])
        assert torch.equal(a["rejected_input_ids"], b["rejected_input_ids"])


def test_dpo_style_records_from_jsonl(word_tokenizer, write):
    record = {"conversations": [{"from": "human", "value": "describe the cat"}],
              "chosen": {"from": "gpt", "value": "the cat is lovely ."}, "rejected": {"from": "gpt", "value": "dull"}}
    (item,) = PreferenceDataset(write("dpo.jsonl", [record]), word_tokenizer)
    assert word_tokenizer.convert_ids_to_tokens(item["rejected_input_ids"])[-2:] == ["dull", "<eos>"]


# ---------------------------------------------------------------------------------------------
# truncation
# ---------------------------------------------------------------------------------------------
def test_responses_lose_their_end(word_tokenizer):
    record = {"prompt": "describe the cat", "chosen": "the cat is gentle , lovely and cheerful .",
              "rejected": "the cat is dull ."}
    (full,) = PreferenceDataset([record], word_tokenizer)
    prompt_len = len(word_tokenizer(format_prompt(word_tokenizer, user("describe the cat")))["input_ids"])
    (item,) = PreferenceDataset([record], word_tokenizer, max_len=prompt_len + 4)
    assert torch.equal(item["chosen_input_ids"], full["chosen_input_ids"][:prompt_len + 4])
    assert torch.equal(item["rejected_input_ids"], full["rejected_input_ids"][:prompt_len + 4])


def test_pair_whose_response_is_truncated_away_is_dropped(word_tokenizer):
    ok = {"prompt": "describe the cat", "chosen": "the cat is gentle .", "rejected": "dull"}
    long = {"prompt": "describe the cat " * 10, "chosen": "the cat is gentle .", "rejected": "dull"}
    dataset = PreferenceDataset([long, ok], word_tokenizer, max_len=16)
    assert len(dataset) == 1 and dataset.num_truncated_away == 1
    with pytest.raises(DataError, match=r"^<list>: no pair left: all 1 pairs were truncated away by max_len=16"):
        PreferenceDataset([long], word_tokenizer, max_len=16)


# ---------------------------------------------------------------------------------------------
# bad records
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("record,message", [
    ({"prompt": "x", "chosen": "y"}, "missing field 'rejected'"),
    ({"prompt": "x", "chosen": "y", "rejected": 2}, "field 'rejected' must be a string, got int"),
    ({"instruction": "x", "rejected": "y"}, "missing field 'chosen'"),
    ({"chosen": "\n\nHuman: hi\n\nAssistant: a"}, "missing field 'rejected'"),
    ({"chosen": "hello", "rejected": "\n\nHuman: hi\n\nAssistant: a"},
     "field 'chosen' is not an hh-rlhf dialogue (no '\\n\\nAssistant:' turn)"),
    ({"chosen": "preamble\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"},
     "field 'chosen' is not an hh-rlhf dialogue (it must start with '\\n\\nHuman:')"),
    ({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": ["x"]}, "field 'rejected' must be a string, got list"),
    ({"conversations": [{"from": "human", "value": "x"}], "chosen": 3, "rejected": "y"},
     "field 'chosen' must be a string or an object, got int"),
    ({"conversations": [{"from": "human", "value": "x"}], "chosen": {"from": "human", "value": "y"}, "rejected": "y"},
     "field 'chosen.from' must be an assistant turn, got 'human'"),
    ({"conversations": [{"from": "human", "value": "x"}], "chosen": {"value": "y"}, "rejected": "y"},
     "missing field 'chosen.role' or 'chosen.from'"),
    ({"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}], "chosen": "a",
      "rejected": "b"}, "field 'conversations' must end with a user turn, got 'assistant'"),
    ({"question": "x", "good": "y"}, "unknown record format (fields: 'good', 'question'); accepted field sets: "
                                     "{conversations, chosen, rejected}; {messages, chosen, rejected}; "
                                     "{instruction, chosen, rejected (+ input)}; {prompt, chosen, rejected}; "
                                     "{chosen, rejected as hh-rlhf dialogues}"),
])
def test_bad_record_names_file_row_and_field(word_tokenizer, write, record, message):
    good = {"prompt": "x", "chosen": "y", "rejected": "z"}
    path = write("pairs.json", [good, good, record])
    with pytest.raises(DataError) as info:
        PreferenceDataset(path, word_tokenizer)
    assert str(info.value) == f"{path}:row 3: {message}"
