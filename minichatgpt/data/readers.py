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

import os
import warnings
from contextlib import contextmanager
from typing import Any, List, Optional, Sequence, Union

from .formats import read_file
from .rows import FILE_TYPES, DataError, OnInvalid, Record, Row, indexed_rows, raise_error, take, type_name  # noqa: F401

Source = Union[str, "os.PathLike[str]", Sequence[Record]]
# Names such as "Anthropic/hh-rlhf" are hub datasets; these prefixes only ever start a local path.
PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


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
            rows = read_file(name, limit, on_row_error)
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


def _rows_of(records: Sequence[Any], name: str, limit: Optional[int], on_invalid: OnInvalid) -> List[Row]:
    n = len(records) if limit is None else min(limit, len(records))
    if hasattr(records, "select"):  # datasets.Dataset: avoid materializing rows beyond the limit
        records = records.select(range(n))
    return indexed_rows((records[i] for i in range(n)), name, on_invalid)


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
