"""Fuzzing: malformed records, lines and bytes give DataError, never another exception."""

import gzip
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minichatgpt.data import DataError, PreferenceDataset, PretrainDataset, PromptDataset, SFTDataset

DATASETS = [SFTDataset, PreferenceDataset, PromptDataset, PretrainDataset]
FIELDS = ["instruction", "input", "output", "prompt", "completion", "response", "chosen", "rejected", "messages",
          "conversations", "instances", "text", "role", "content", "from", "value"]
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

words = st.sampled_from(["describe the cat", "the cat is gentle .", "", " ", "\n\nHuman: hi", "\n\nAssistant: ok",
                         "\n\nHuman: describe the cat\n\nAssistant: the cat is dull .", "user", "assistant", "human",
                         "gpt", "system", "bot", "x\ud800"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), words, st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4)),
    max_leaves=12)
records = st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=5)), json_values, max_size=5)


def loads_or_data_error(build):
    """Run ``build``; a DataError is a fine answer, any other exception fails the test."""
    try:
        build()
    except DataError as err:
        assert str(err)  # a message, naming where
        return False
    return True


@FUZZ
@given(rows=st.lists(st.one_of(records, json_values), min_size=1, max_size=4), index=st.integers(0, 3))
def test_random_records_give_data_error(word_tokenizer, chat_tokenizer, rows, index):
    tokenizer = word_tokenizer if index % 2 else chat_tokenizer
    loads_or_data_error(lambda: DATASETS[index](rows, tokenizer, max_len=32))


@FUZZ
@given(rows=st.lists(st.one_of(records, json_values), min_size=1, max_size=4), index=st.integers(0, 3))
def test_random_jsonl_rows_give_data_error(word_tokenizer, tmp_path_factory, rows, index):
    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    loads_or_data_error(lambda: DATASETS[index](str(path), word_tokenizer, max_len=32))


@FUZZ
@given(lines=st.lists(st.one_of(st.text(max_size=30), st.sampled_from(['{"instruction": ', '{"text": "a"}', "[]", "{}",
                                                                         '{"prompt": "x", "completion": 1}'])),
                      min_size=1, max_size=5),
       index=st.integers(0, 3))
def test_malformed_jsonl_lines_give_data_error(word_tokenizer, tmp_path_factory, lines, index):
    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    loads_or_data_error(lambda: DATASETS[index](str(path), word_tokenizer, max_len=32))


@FUZZ
@given(content=st.binary(max_size=64), name=st.sampled_from(["d.json", "d.jsonl", "d.csv", "d.jsonl.gz", "d.parquet"]),
       compress=st.booleans())
def test_random_bytes_give_data_error(word_tokenizer, tmp_path_factory, content, name, compress):
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(gzip.compress(content) if compress and name.endswith(".gz") else content)
    loads_or_data_error(lambda: SFTDataset(str(path), word_tokenizer, max_len=32))


@pytest.mark.parametrize("dataset_class", DATASETS)
def test_known_bad_rows_fail_with_data_error(word_tokenizer, dataset_class):
    for rows in ([{}], [{"messages": [None]}], [{"chosen": 1}], [{"text": None}], [[1]]):
        assert not loads_or_data_error(lambda: dataset_class(rows, word_tokenizer))
