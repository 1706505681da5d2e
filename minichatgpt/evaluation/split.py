"""Disjoint parts of a data file (e.g. proxy-RM pairs, gold-RM pairs, held-out pairs), by prompt.

Records are grouped by their prompt (the conversation before the reply, as the preference and prompt
readers see it), the groups are shuffled with a seed, and each part takes whole groups in turn until
it holds its size. So no prompt is in two parts: a reward model is never scored on a prompt it was
trained on, even with other replies.
"""

import json
import os
from typing import Dict, List, Sequence, Tuple

import torch

from ..data.fields import detect_format
from ..data.preference import PREFERENCE_FORMATS, preference_pair
from ..data.prompts import PROMPT_FORMATS, prompt_conversations
from ..data.readers import DataError, Record, Source, load_rows, source_name


def prompt_key(record: Record, where: str) -> str:
    """The prompt of a preference or prompt record as a string; the whole record for any other one."""
    try:
        (messages, _), _ = preference_pair(record, detect_format(record, PREFERENCE_FORMATS, where), where)
    except DataError:
        try:
            messages = prompt_conversations(record, detect_format(record, PROMPT_FORMATS, where), where)
        except DataError:
            messages = record
    return json.dumps(messages, sort_keys=True, ensure_ascii=False, default=str)


def parse_parts(spec: str) -> List[Tuple[str, float]]:
    """``"proxy=300,gold=0.5,heldout=200"`` -> [(name, size)]: an integer is a number of records, a number
    below 1 a share of all records."""
    parts = []
    for item in spec.split(","):
        name, _, size = item.strip().partition("=")
        try:
            value = float(size)
        except ValueError:
            value = -1.0
        if not name or value <= 0 or (value >= 1 and value != int(value)):
            raise ValueError(f"part {item.strip()!r} must be NAME=COUNT (an integer) or NAME=SHARE (below 1)")
        parts.append((name, value))
    if len({name for name, _ in parts}) != len(parts):
        raise ValueError(f"part names must be distinct, got {spec!r}")
    return parts


def split_rows(keys: Sequence[str], parts: Sequence[Tuple[str, float]], seed: int) -> Dict[str, List[int]]:
    """Row indices of each part: groups of equal ``keys`` in a seeded random order, whole groups to each
    part in turn until it holds its size (a count, or a share of ``len(keys)``). Rows left over are in
    no part."""
    groups: Dict[str, List[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    grouped = list(groups.values())
    queue = iter([grouped[i] for i in order])
    result: Dict[str, List[int]] = {}
    for name, size in parts:
        target = int(size) if size >= 1 else round(size * len(keys))
        rows: List[int] = []
        while len(rows) < target:
            group = next(queue, None)
            if group is None:
                break
            rows += group
        result[name] = sorted(rows)
    return result


def split_file(source: Source, spec: str, output_dir: str, seed: int = 42) -> Dict[str, Dict[str, object]]:
    """Write each part of ``source`` to ``output_dir/NAME.jsonl``; returns ``{name: {"path", "records"}}``.

    Raises DataError naming the source when it is too small for the sizes asked.
    """
    parts = parse_parts(spec)
    rows = load_rows(source)
    split = split_rows([prompt_key(record, where) for where, record in rows], parts, seed)
    os.makedirs(output_dir, exist_ok=True)
    summary = {}
    for name, size in parts:
        indices = split[name]
        if not indices:
            raise DataError(f"{source_name(source)}: no record left for part {name!r} ({len(rows)} records in all)")
        path = os.path.join(output_dir, f"{name}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for i in indices:
                f.write(json.dumps(rows[i].record, ensure_ascii=False, default=str) + "\n")
        summary[name] = {"path": path, "records": len(indices)}
    return summary
