"""Fuzzing: malformed records, lines and bytes give a DataError that starts with the source's name (and the
row, for a row's problem), never another exception; with ``skip_invalid`` exactly the invalid rows are left
out and their number is reported."""

import gzip
import json
import warnings

import pytest
from hypothesis import HealthCheck, event, given, settings
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
# Rows that some of the datasets accept, so that skipping leaves something to train on.
valid_records = st.sampled_from([
    {"instruction": "describe the cat", "output": "the cat is gentle ."},
    {"prompt": "describe the dog", "chosen": "the dog is lovely .", "rejected": "the dog is dull ."},
    {"text": "the cat is gentle ."},
    {"messages": [{"role": "user", "content": "describe the bird"}, {"role": "assistant", "content": "nice ."}]},
    {"instruction": "describe the cake", "chosen": "the cake is sweet .", "rejected": "the cake is stale .",
     "text": "the cake"},
])


def loads_or_data_error(build, name):
    """Run ``build``; a DataError naming the source ``name`` first is a fine answer, anything else fails."""
    try:
        build()
    except DataError as err:
        assert str(err).startswith(f"{name}:"), str(err)  # "name: ...", "name:3: ..." or "name:row 2: ..."
        return False
    return True


def row_is_invalid(dataset_class, source, name, tokenizer) -> bool:
    """Whether a one-row source fails because of its row (``name:1`` / ``name:row 1``), not for want of text."""
    try:
        dataset_class(source, tokenizer, max_len=32)
    except DataError as err:
        return str(err).startswith((f"{name}:1:", f"{name}:row 1:"))
    return False


def check_skip_invalid(dataset_class, source, name, tokenizer, expected_skipped: int) -> None:
    """With ``skip_invalid=True`` the invalid rows are counted and warned about, or nothing is left at all."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = dataset_class(source, tokenizer, max_len=32, skip_invalid=True)
        except DataError as err:  # every row invalid, or the valid ones hold no trainable text
            assert str(err).startswith(f"{name}:"), str(err)
            event("nothing left to train on")
            return
    event("rows skipped" if expected_skipped else "no invalid row")
    assert dataset.num_invalid_skipped == expected_skipped
    reported = [w for w in caught if "invalid row(s)" in str(w.message)]
    assert len(reported) == (expected_skipped > 0)
    if reported:
        assert str(reported[0].message).startswith(f"{name}: skipped {expected_skipped} invalid row(s)")


@FUZZ
@given(rows=st.lists(st.one_of(records, json_values), min_size=1, max_size=4), index=st.integers(0, 3))
def test_random_records_give_data_error(word_tokenizer, chat_tokenizer, rows, index):
    tokenizer = word_tokenizer if index % 2 else chat_tokenizer
    loads_or_data_error(lambda: DATASETS[index](rows, tokenizer, max_len=32), "<list>")


@FUZZ
@given(rows=st.lists(st.one_of(records, json_values), min_size=1, max_size=4), index=st.integers(0, 3))
def test_random_jsonl_rows_give_data_error(word_tokenizer, tmp_path_factory, rows, index):
    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    loads_or_data_error(lambda: DATASETS[index](str(path), word_tokenizer, max_len=32), str(path))


@FUZZ
@given(lines=st.lists(st.one_of(st.text(max_size=30), st.sampled_from(['{"instruction": ', '{"text": "a"}', "[]", "{}",
                                                                         '{"prompt": "x", "completion": 1}'])),
                      min_size=1, max_size=5),
       index=st.integers(0, 3))
def test_malformed_jsonl_lines_give_data_error(word_tokenizer, tmp_path_factory, lines, index):
    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    loads_or_data_error(lambda: DATASETS[index](str(path), word_tokenizer, max_len=32), str(path))


@FUZZ
@given(content=st.binary(max_size=64), name=st.sampled_from(["d.json", "d.jsonl", "d.csv", "d.jsonl.gz", "d.parquet"]),
       compress=st.booleans())
def test_random_bytes_give_data_error(word_tokenizer, tmp_path_factory, content, name, compress):
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(gzip.compress(content) if compress and name.endswith(".gz") else content)
    loads_or_data_error(lambda: SFTDataset(str(path), word_tokenizer, max_len=32), str(path))


@pytest.mark.parametrize("dataset_class", DATASETS)
def test_known_bad_rows_fail_with_data_error(word_tokenizer, dataset_class):
    for rows in ([{}], [{"messages": [None]}], [{"chosen": 1}], [{"text": None}], [[1]]):
        assert not loads_or_data_error(lambda: dataset_class(rows, word_tokenizer), "<list>")


@FUZZ
@given(rows=st.lists(st.one_of(valid_records, records, json_values), min_size=1, max_size=5), index=st.integers(0, 3))
def test_skip_invalid_leaves_out_exactly_the_invalid_records(word_tokenizer, rows, index):
    dataset_class = DATASETS[index]
    invalid = sum(row_is_invalid(dataset_class, [row], "<list>", word_tokenizer) for row in rows)
    check_skip_invalid(dataset_class, rows, "<list>", word_tokenizer, invalid)


@FUZZ
@given(lines=st.lists(st.one_of(st.text(max_size=20), valid_records.map(json.dumps), st.sampled_from(
    ['{"instruction": ', "[]", "{}", "null", '{"prompt": "x", "completion": 1}', '{"prompt": "describe the dog"}'])),
    min_size=1, max_size=5), index=st.integers(0, 3))
def test_skip_invalid_jsonl_lines(word_tokenizer, tmp_path_factory, lines, index):
    directory = tmp_path_factory.mktemp("fuzz")
    lines = [line.replace("\r", " ").replace("\n", " ") for line in lines]  # one record per line
    invalid = 0
    for i, line in enumerate(lines):
        single = directory / f"line{i}.jsonl"
        single.write_text(line, encoding="utf-8", errors="surrogatepass")
        invalid += line.strip() != "" and row_is_invalid(DATASETS[index], str(single), str(single), word_tokenizer)
    path = directory / "data.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    check_skip_invalid(DATASETS[index], str(path), str(path), word_tokenizer, invalid)


@pytest.mark.parametrize("dataset_class", DATASETS)
def test_invalid_rows_fail_by_default_and_are_counted_when_skipped(word_tokenizer, dataset_class, tmp_path):
    good = {"instruction": "describe the cat", "output": "the cat is gentle .", "chosen": "the cat is gentle .",
            "rejected": "the cat is dull .", "text": "the cat is gentle ."}
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([json.dumps(good), "{not json", json.dumps({"instruction": 3}), "[1]",
                               json.dumps(good)]))
    with pytest.raises(DataError, match=rf"^{path}:2: invalid JSON"):
        dataset_class(str(path), word_tokenizer)
    with pytest.warns(UserWarning, match=rf"^{path}: skipped 3 invalid row\(s\) \(--skip_invalid_rows\); the first: "
                                         rf"{path}:2: invalid JSON"):
        dataset = dataset_class(str(path), word_tokenizer, skip_invalid=True)
    assert dataset.num_invalid_skipped == 3 and len(dataset) >= 2
    path.write_text("[1]\n{}\n")
    with pytest.raises(DataError, match=rf"^{path}: no valid row: all 2 rows are invalid \(skipped\); the first: "
                                        rf"{path}:1: record must"):
        dataset_class(str(path), word_tokenizer, skip_invalid=True)
