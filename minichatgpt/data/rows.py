"""The units the data readers deal in: records, their locations, and the error that names them."""

from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional

Record = Dict[str, Any]
TEXT_TYPES = (".json", ".jsonl", ".csv")
FILE_TYPES = TEXT_TYPES + (".parquet",)


class DataError(ValueError):
    """A data source or record that cannot be used. The message names the file, the row and the field."""


class Row(NamedTuple):
    where: str  # 1-based location: "data.jsonl:3" (a line) or "data.json:row 5" (a record)
    record: Record


def raise_error(err: DataError) -> None:
    """The default answer to an invalid row: fail, naming it."""
    raise err


OnInvalid = Callable[[DataError], None]


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


def take(rows: Iterable[Row], limit: Optional[int]) -> List[Row]:
    out = []
    for row in rows:
        if limit is not None and len(out) >= limit:
            break
        out.append(row)
    return out


def as_record(value: Any, where: str) -> Record:
    if not isinstance(value, dict):
        raise DataError(f"{where}: record must be an object, got {type_name(value)}")
    return value


def indexed_rows(values: Iterable[Any], name: str, on_invalid: OnInvalid) -> List[Row]:
    """``name:row i`` rows of the object values; any other value goes to ``on_invalid``."""
    rows = []
    for i, value in enumerate(values, 1):
        try:
            rows.append(Row(f"{name}:row {i}", as_record(value, f"{name}:row {i}")))
        except DataError as err:
            on_invalid(err)
    return rows
