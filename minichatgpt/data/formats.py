"""Local data files: JSON (an array, an object holding one list, or JSON lines), JSON lines, CSV and
Parquet, the text ones optionally gzipped. Every row keeps its location (``path:3`` is line 3)."""

import csv
import gzip
import json
import os
from typing import Any, Iterable, Iterator, List, Optional, TextIO

from .rows import TEXT_TYPES, DataError, OnInvalid, Row, as_record, indexed_rows, take, type_name

# ---------------------------------------------------------------------------------------------
def read_file(path: str, limit: Optional[int], on_invalid: OnInvalid) -> List[Row]:
    lower = path.lower()
    compressed = lower.endswith(".gz")
    ext = os.path.splitext(lower[:-3] if compressed else lower)[1]
    if ext == ".parquet" and not compressed:
        return _read_parquet(path, limit)
    if ext not in TEXT_TYPES:
        raise DataError(f"{path}: unsupported file type; expected .json, .jsonl, .csv or .parquet "
                        f"(the text ones optionally gzipped, e.g. .jsonl.gz)")
    with _open_text(path, compressed) as stream:
        try:
            if ext == ".jsonl":
                return take(_json_lines(stream, path, on_invalid), limit)
            if ext == ".csv":
                return take(_csv_rows(stream, path, on_invalid), limit)
            return _read_json(stream.read(), path, limit, on_invalid)
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
        except (OSError, EOFError) as err:  # truncated or corrupt gzip stream
            raise DataError(f"{path}: cannot read ({err})") from err


def _open_text(path: str, compressed: bool) -> TextIO:
    # utf-8-sig drops a byte-order mark, which editors on Windows like to add.
    if compressed:
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _parse_json(text: str, where: str, lineno_offset: int = 0) -> Any:
    """``json.loads`` with errors turned into DataError at ``where:line``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}:{err.lineno + lineno_offset}: invalid JSON ({err.msg} at column {err.colno})") from err
    except RecursionError as err:
        raise DataError(f"{where}:{1 + lineno_offset}: invalid JSON (nested too deeply)") from err


def _json_lines(lines: Iterable[str], path: str, on_invalid: OnInvalid) -> Iterator[Row]:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = Row(where, as_record(_parse_json(line, path, lineno - 1), where))
        except DataError as err:
            on_invalid(err)
            continue
        yield row


def _read_json(text: str, path: str, limit: Optional[int], on_invalid: OnInvalid) -> List[Row]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        # "Extra data" after a complete first value: most likely JSON lines saved as .json.
        first = text.lstrip().split("\n", 1)[0]
        if err.msg == "Extra data" and _is_json(first):
            return take(_json_lines(text.split("\n"), path, on_invalid), limit)
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno})") from err
    except RecursionError as err:
        raise DataError(f"{path}: invalid JSON (nested too deeply)") from err
    if isinstance(data, dict):
        lists = [key for key, value in data.items() if isinstance(value, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON array of records or an object holding one list, "
                            f"got an object with {len(lists)} lists")
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records, got {type_name(data)}")
    return indexed_rows(data if limit is None else data[:limit], path, on_invalid)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _csv_rows(stream: TextIO, path: str, on_invalid: OnInvalid) -> Iterator[Row]:
    reader = csv.DictReader(stream)
    try:
        for i, record in enumerate(reader, 1):
            where = f"{path}:row {i}"
            if None in record:  # DictReader files surplus values under the key None
                on_invalid(DataError(f"{where}: {len(record[None])} more value(s) than the header has columns"))
                continue
            # A short row leaves None in its last columns: treat those fields as absent, so the field
            # check reports "missing field" for the ones that matter.
            yield Row(where, {key: value for key, value in record.items() if value is not None})
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: invalid CSV ({err})") from err


def _read_parquet(path: str, limit: Optional[int]) -> List[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: List[Row] = []
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                if limit is not None and len(rows) >= limit:
                    return rows
                rows.append(Row(f"{path}:row {len(rows) + 1}", record))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: cannot read Parquet ({err})") from err
    return rows
