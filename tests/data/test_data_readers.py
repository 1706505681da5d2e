"""read_records: every file type, lists, hub names, and errors that name file, line/row and problem."""

import gzip
import os

import pytest

from minichatgpt.data import DataError, read_records
from minichatgpt.data.readers import load_rows, looks_like_path

RECORDS = [
    {"instruction": "describe the cat", "input": "", "output": "the cat is gentle ."},
    {"instruction": "describe the soup", "input": "hot", "output": "the soup is sweet ."},
    {"instruction": "tell me about the rope", "input": "", "output": "the rope is sturdy ."},
]
FILE_NAMES = ["data.json", "data.jsonl", "data.csv", "data.parquet", "data.json.gz", "data.jsonl.gz", "data.csv.gz"]


@pytest.mark.parametrize("name", FILE_NAMES)
def test_every_file_type_reads_the_same_records(write, name):
    assert read_records(write(name, RECORDS)) == RECORDS


@pytest.mark.parametrize("name", FILE_NAMES)
def test_max_records_keeps_the_first_n(write, name):
    assert read_records(write(name, RECORDS), max_records=2) == RECORDS[:2]


def test_list_is_returned_as_is_and_truncated():
    records = [dict(r) for r in RECORDS]
    out = read_records(records)
    assert out == records and all(a is b for a, b in zip(out, records))
    assert read_records(records, max_records=1) == records[:1]


def test_json_object_holding_one_list_and_json_lines_named_json(tmp_path):
    import json

    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 1, "data": RECORDS}))
    assert read_records(str(path)) == RECORDS
    path = tmp_path / "lines.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert read_records(str(path)) == RECORDS


def test_jsonl_locations_count_blank_lines_and_bom(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": "1"}\n\n{"a": "2"}\n')
    rows = load_rows(str(path))
    assert [r.where for r in rows] == [f"{path}:1", f"{path}:3"]
    assert [r.record for r in rows] == [{"a": "1"}, {"a": "2"}]


def test_in_memory_hf_dataset():
    import datasets

    assert read_records(datasets.Dataset.from_list(RECORDS), max_records=2) == RECORDS[:2]


def test_hub_name_goes_to_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(RECORDS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert read_records("someone/sft-data", max_records=2, split="test") == RECORDS[:2]
    assert calls == [("someone/sft-data", "test")]


def test_hub_failure_is_a_data_error_naming_the_dataset(monkeypatch):
    import datasets

    def failing_load_dataset(name, split):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", failing_load_dataset)
    with pytest.raises(DataError, match=r"someone/missing: not a local file.*split 'train'.*offline"):
        read_records("someone/missing")


@pytest.mark.parametrize("name,is_path", [
    ("Anthropic/hh-rlhf", False), ("imdb", False), ("./data", True), ("/abs/data", True), ("~/data", True),
    ("data/train.jsonl", True), ("train.csv", True), ("x.jsonl.gz", True), ("data/sft/train", True),
])
def test_looks_like_path(name, is_path):
    assert looks_like_path(name) == is_path


@pytest.mark.parametrize("name", ["missing.jsonl", "./missing", "sub/dir/missing"])
def test_missing_path_is_a_clear_error(tmp_path, name):
    path = os.path.join(str(tmp_path), name) if not name.startswith("./") else name
    with pytest.raises(DataError, match=f"{path}: no such file"):
        read_records(path)


# ---------------------------------------------------------------------------------------------
# malformed files: the message names the file and the 1-based line or row
# ---------------------------------------------------------------------------------------------
def _error(path, **kwargs):
    with pytest.raises(DataError) as info:
        read_records(str(path), **kwargs)
    return str(info.value)


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": "1"}\n\n{"a": "2" "b": "3"}\n')
    message = _error(path)
    assert message.startswith(f"{path}:3: invalid JSON (Expecting ',' delimiter")


def test_bad_json_array_names_the_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n {"a": "1"},\n {"a": "2",}\n]')
    assert _error(path).startswith(f"{path}:3: invalid JSON")


def test_bad_line_of_json_lines_named_json(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"a": "1"}\n{"a": "2"}\n{"a": \n')
    assert _error(path).startswith(f"{path}:3: invalid JSON")


def test_bad_gzipped_jsonl_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": "1"}\n{oops}\n'))
    assert _error(path).startswith(f"{path}:2: invalid JSON")


@pytest.mark.parametrize("name,text,where,got", [
    ("data.jsonl", '{"a": "1"}\n[1, 2]\n', ":2", "list"),
    ("data.json", '[{"a": "1"}, "x"]', ":row 2", "string"),
])
def test_non_object_record(tmp_path, name, text, where, got):
    path = tmp_path / name
    path.write_text(text)
    assert _error(path) == f"{path}{where}: record must be an object, got {got}"


def test_non_object_in_list():
    with pytest.raises(DataError, match=r"^<list>:row 2: record must be an object, got int$"):
        read_records([{"a": "1"}, 5])


@pytest.mark.parametrize("name,content", [
    ("empty.jsonl", b""), ("blank.jsonl", b"\n\n"), ("empty.json", b"[]"), ("header.csv", b"a,b\n"),
    ("empty.csv", b""), ("empty.jsonl.gz", gzip.compress(b"")),
])
def test_empty_file_names_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert _error(path) == f"{path}: no records"


def test_empty_list_and_dataset():
    with pytest.raises(DataError, match="^<list>: no records$"):
        read_records([])


def test_empty_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.string())}), str(path))
    assert _error(path) == f"{path}: no records"


@pytest.mark.parametrize("name,content,expected", [
    ("data.txt", b"{}", "unsupported file type"),
    ("data.json", b'{"a": [1], "b": [2]}', "an object holding one list, got an object with 2 lists"),
    ("data.json", b'"text"', "expected a JSON array of records, got string"),
    ("data.jsonl.gz", b"not gzip at all", "cannot read"),
    ("data.jsonl", b'{"a": "\xff"}\n', "not UTF-8 text"),
    ("data.parquet", b"not parquet", "cannot read Parquet"),
])
def test_unreadable_files(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    message = _error(path)
    assert message.startswith(str(path)) and expected in message


def test_csv_row_with_extra_values(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n3,4,5\n")
    assert _error(path) == f"{path}:row 2: 1 more value(s) than the header has columns"


def test_csv_short_row_leaves_the_field_absent(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("instruction,output\ndescribe the cat\n")
    assert read_records(str(path)) == [{"instruction": "describe the cat"}]


def test_deeply_nested_json_is_a_data_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100000 + "\n")
    assert _error(path).startswith(f"{path}:1: invalid JSON")


def test_bad_max_records():
    with pytest.raises(ValueError, match="max_records"):
        read_records(RECORDS, max_records=0)


def test_unsupported_source_type():
    with pytest.raises(TypeError, match="source must be"):
        read_records(42)
