"""Raw records from files, in-memory lists and Hugging Face datasets: the first step of every stage.

A source becomes a list of :class:`Row` s, each a record (a dict) plus its location, ``"path:3"`` for
line 3 of a JSON-lines file or ``"path:row 5"`` for the fifth record of an array, table or list. The
datasets keep the location so that a field check further on can say exactly where a bad value sits.

Accepted sources:

* a local file: ``.json`` (an array of objects, an object holding one list, or JSON lines under the
  wrong extension), ``.jsonl``, ``.csv``, ``.parquet``, and ``.json.gz`` / ``.jsonl.gz`` / ``.csv.gz``;
* a list of dicts, or an in-memory ``datasets.Dataset``;
* the name of a Hugging Face dataset (``"org/name"``), loaded with ``datasets.load_dataset`` when no
  local file has that name and the name does not look like a path.
"""

import csv
import gzip
import json
import os
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, TextIO, Union

Record = Dict[str, Any]
Source = Union[str, "os.PathLike[str]", Sequence[Record]]

TEXT_TYPES = (".json", ".jsonl", ".csv")
FILE_TYPES = TEXT_TYPES + (".parquet",)
# Names such as "Anthropic/hh-rlhf" are hub datasets; these prefixes only ever start a local path.
PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


class DataError(ValueError):
    """A data source or record that cannot be used. The message names the file, the row and the field."""


class Row(NamedTuple):
    where: str  # 1-based location: "data.jsonl:3" (a line) or "data.json:row 5" (a record)
    record: Record


def raise_error(err: DataError) -> None:
    """The default answer to an invalid row: fail, naming it."""
    raise err


class InvalidRows:
    """What a dataset does with invalid rows: raise (the default), or with ``enabled=True`` (the datasets'
    ``skip_invalid``, the scripts' ``--skip_invalid_rows``) leave them out, count them and report the count
    once: a warning naming the source and the first error.

    Use ``skip`` as ``load_rows``' ``on_invalid`` (unparsable lines, non-object records) and ``guard()``
    around the parsing of each record (missing fields, wrong types, rejected conversations).
    """

    def __init__(self, source: "Source", enabled: bool = False):
        self.name, self.enabled = source_name(source), enabled
        self.count, self.first = 0, None

    def skip(self, err: DataError) -> None:
        if not self.enabled:
            raise err
        self.count += 1
        self.first = self.first or str(err)

    @contextmanager
    def guard(self):
        try:
            yield
        except DataError as err:
            self.skip(err)

    def report(self, kept: int) -> None:
        """Warn how many rows were skipped; with none kept, a DataError (there is nothing to train on)."""
        if not self.count:
            return
        if not kept:
            raise DataError(f"{self.name}: no valid row: all {self.count} rows are invalid (skipped); "
                            f"the first: {self.first}")
        warnings.warn(f"{self.name}: skipped {self.count} invalid row(s) (--skip_invalid_rows); the first: "
                      f"{self.first}", stacklevel=3)


def type_name(value: Any) -> str:
    """JSON-flavoured name of a value's type for error messages: string, int, float, bool, list, object, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is a subclass of int
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def read_records(source: Source, max_records: Optional[int] = None, split: str = "train") -> List[Record]:
    """Read the records of a file, a list or a Hugging Face dataset.

    Args:
        source: a local path, a list of dicts (returned as is, truncated), an in-memory
            ``datasets.Dataset``, or a Hugging Face dataset name.
        max_records: keep only the first N records (the scripts' ``max_datasets_size``); files are read
            no further than needed where the format allows it.
        split: the split to load when ``source`` is a Hugging Face dataset name.
    Returns:
        The records, in file order.
    Raises:
        DataError: unreadable or empty source, invalid JSON/CSV, or a record that is not an object; the
            message names the file and the 1-based line or row.
    """
    return [row.record for row in load_rows(source, max_records, split)]


OnInvalid = Callable[[DataError], None]


def load_rows(source: Source, max_records: Optional[int] = None, split: str = "train",
              on_invalid: OnInvalid = raise_error) -> List[Row]:
    """Like :func:`read_records`, keeping each record's location for error messages.

    ``on_invalid`` gets the DataError of each row that cannot be a record (an unparsable JSON line, a
    value that is not an object, a CSV row with surplus values); it raises by default, and
    ``InvalidRows.skip`` may count the row instead. Errors of the whole source always raise.
    """
    limit = _check_limit(max_records)
    name = source_name(source)
    skipped: List[DataError] = []

    def on_row_error(err: DataError) -> None:
        on_invalid(err)  # raises, unless invalid rows are skipped
        skipped.append(err)

    if isinstance(source, (str, os.PathLike)):
        if os.path.isfile(name):
            rows = _read_file(name, limit, on_row_error)
        elif os.path.isdir(name) or not looks_like_path(name):
            rows = _read_hub(name, split, limit, on_row_error)
        else:
            raise DataError(f"{name}: no such file")
    elif hasattr(source, "column_names") and hasattr(source, "select"):  # an in-memory datasets.Dataset
        rows = _rows_of(source, name, limit, on_row_error)
    elif isinstance(source, Sequence):
        rows = _rows_of(source, name, limit, on_row_error)
    else:
        raise TypeError(f"source must be a path, a dataset name or a list of records, got {type(source).__name__}")
    if not rows:
        if skipped:
            raise DataError(f"{name}: no valid row: all {len(skipped)} rows are invalid (skipped); the first: "
                            f"{skipped[0]}")
        raise DataError(f"{name}: no records")
    return rows


def source_name(source: Source) -> str:
    """How error messages name a source: its path or dataset name, ``<list>`` or ``<dataset>``."""
    if isinstance(source, (str, os.PathLike)):
        return os.path.expanduser(os.fspath(source))
    return "<dataset>" if hasattr(source, "column_names") else "<list>"


def looks_like_path(name: str) -> bool:
    """Whether a string that names no existing file was meant as a local path rather than a hub dataset."""
    if name.startswith(PATH_PREFIXES) or os.path.isabs(name):
        return True
    lower = name.lower()
    if lower.endswith(".gz"):
        return True
    if os.path.splitext(lower)[1] in FILE_TYPES:
        return True
    # Hub names have at most one slash ("org/name"); "data/sft/train" is a directory path.
    return name.replace("\\", "/").count("/") > 1


def _check_limit(max_records: Optional[int]) -> Optional[int]:
    if max_records is not None and (isinstance(max_records, bool) or not isinstance(max_records, int)
                                    or max_records < 1):
        raise ValueError(f"max_records must be a positive int or None, got {max_records!r}")
    return max_records


def _take(rows: Iterable[Row], limit: Optional[int]) -> List[Row]:
    out = []
    for row in rows:
        if limit is not None and len(out) >= limit:
            break
        out.append(row)
    return out


def _as_record(value: Any, where: str) -> Record:
    if not isinstance(value, dict):
        raise DataError(f"{where}: record must be an object, got {type_name(value)}")
    return value


def _rows_of(records: Sequence[Any], name: str, limit: Optional[int], on_invalid: OnInvalid) -> List[Row]:
    n = len(records) if limit is None else min(limit, len(records))
    if hasattr(records, "select"):  # datasets.Dataset: avoid materializing rows beyond the limit
        records = records.select(range(n))
    return _indexed_rows((records[i] for i in range(n)), name, on_invalid)


def _indexed_rows(values: Iterable[Any], name: str, on_invalid: OnInvalid) -> List[Row]:
    """``name:row i`` rows of the object values; any other value goes to ``on_invalid``."""
    rows = []
    for i, value in enumerate(values, 1):
        try:
            rows.append(Row(f"{name}:row {i}", _as_record(value, f"{name}:row {i}")))
        except DataError as err:
            on_invalid(err)
    return rows


# ---------------------------------------------------------------------------------------------
# local files
# ---------------------------------------------------------------------------------------------
def _read_file(path: str, limit: Optional[int], on_invalid: OnInvalid) -> List[Row]:
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
                return _take(_json_lines(stream, path, on_invalid), limit)
            if ext == ".csv":
                return _take(_csv_rows(stream, path, on_invalid), limit)
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
            row = Row(where, _as_record(_parse_json(line, path, lineno - 1), where))
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
            return _take(_json_lines(text.split("\n"), path, on_invalid), limit)
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
    return _indexed_rows(data if limit is None else data[:limit], path, on_invalid)


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


# ---------------------------------------------------------------------------------------------
# Hugging Face hub
# ---------------------------------------------------------------------------------------------
def _read_hub(name: str, split: str, limit: Optional[int], on_invalid: OnInvalid) -> List[Row]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many types (not found, offline, bad config)
        raise DataError(f"{name}: not a local file, and loading it as a Hugging Face dataset "
                        f"(split {split!r}) failed: {type(err).__name__}: {err}") from err
    return _rows_of(dataset, f"{name}[{split}]", limit, on_invalid)
