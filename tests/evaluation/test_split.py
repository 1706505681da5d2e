"""Disjoint parts of a data file, grouped by prompt."""

import json

import pytest

from minichatgpt.evaluation import parse_parts, split_file, split_rows


def test_split_rows_keeps_groups_whole_and_parts_disjoint():
    keys = ["a", "b", "a", "c", "d", "e", "b", "f", "g", "h"]
    parts = split_rows(keys, [("one", 3), ("two", 0.4), ("three", 2)], seed=0)
    taken = [i for rows in parts.values() for i in rows]
    assert len(taken) == len(set(taken))  # disjoint
    for name, target in (("one", 3), ("two", 4), ("three", 2)):
        assert len(parts[name]) >= target or name == "three"
    owners = {}
    for name, rows in parts.items():
        for i in rows:
            assert owners.setdefault(keys[i], name) == name  # a key never in two parts
    assert split_rows(keys, [("one", 3)], seed=0) == {"one": parts["one"]}  # same seed, same part
    assert split_rows(keys, [("one", 3)], seed=1) != {"one": parts["one"]}


def test_split_file_writes_disjoint_jsonl_parts_by_prompt(tmp_path):
    records = [{"instruction": f"q{i % 7}", "input": "", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(21)]
    source = tmp_path / "pairs.json"
    source.write_text(json.dumps(records))
    summary = split_file(str(source), "proxy=6,gold=9,heldout=0.2", str(tmp_path / "out"), seed=3)
    parts = {name: [json.loads(line) for line in open(info["path"])] for name, info in summary.items()}
    prompts = {name: {r["instruction"] for r in rows} for name, rows in parts.items()}
    assert not (prompts["proxy"] & prompts["gold"]) and not (prompts["gold"] & prompts["heldout"]) and \
        not (prompts["proxy"] & prompts["heldout"])
    assert [summary[n]["records"] for n in ("proxy", "gold", "heldout")] == [6, 9, 6]  # 3 rows per prompt
    assert all(r in records for rows in parts.values() for r in rows)


@pytest.mark.parametrize("spec", ["proxy", "proxy=0", "proxy=2.5", "a=3,a=4", "=3"])
def test_bad_part_specs_are_rejected(spec):
    with pytest.raises(ValueError, match="part"):
        parse_parts(spec)


def test_a_file_too_small_for_its_parts_is_named(tmp_path):
    from minichatgpt.data import DataError

    source = tmp_path / "small.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(3)))
    with pytest.raises(DataError, match=r"small.jsonl: no record left for part 'c'"):
        split_file(str(source), "a=2,b=1,c=1", str(tmp_path / "out"))
