"""Config files: read a YAML file into a config's dotted keys (errors name the file and line), write one."""

import dataclasses
import difflib
import os
from typing import Any, Dict

import yaml

from .fields import UsageError, coerce, fields_of

def _key_lines(node, prefix: str = "") -> Dict[str, int]:
    """Dotted key -> 1-based line of every mapping key in a composed YAML document."""
    lines: Dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            dotted = f"{prefix}{key.value}"
            lines[dotted] = key.start_mark.line + 1
            lines.update(_key_lines(value, dotted + "."))
    return lines


def _canonical_names(cls) -> Dict[str, str]:
    """Every accepted spelling of a field of ``cls`` -> its field name."""
    names = {}
    for f, _ in fields_of(cls):
        names[f.name] = f.name
        names.update({alias: f.name for alias in f.metadata.get("aliases", ())})
    return names


def load_yaml(cls, path: str) -> Dict[str, Any]:
    """The fields a YAML file sets, as dotted keys -> values converted to each field's type.

    Unknown keys, wrong types and unreadable files are UsageErrors naming the file and line."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            text = f.read()
        data, lines = yaml.safe_load(text), _key_lines(yaml.compose(text))
    except OSError as err:
        raise UsageError(f"--config {path!r} cannot be read: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"--config {path}{where}: not valid YAML: {getattr(err, 'problem', err)}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of field names to values, got {type(data).__name__}")
    return _flatten_yaml(cls, data, path, lines, "")


def _flatten_yaml(cls, data: dict, path: str, lines: Dict[str, int], prefix: str) -> Dict[str, Any]:
    names, types = _canonical_names(cls), {f.name: ft for f, ft in fields_of(cls)}
    values: Dict[str, Any] = {}
    for key, value in data.items():
        where = f"--config {path}, line {lines.get(prefix + str(key), '?')}: {prefix}{key}"
        name = names.get(str(key))
        if name is None:
            close = difflib.get_close_matches(str(key), list(names), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"{where} is not a field of this command{hint}")
        ft = types[name]
        if dataclasses.is_dataclass(ft.base):
            if not isinstance(value, dict):
                raise UsageError(f"{where} must be a section (a mapping of field names to values)")
            values.update(_flatten_yaml(ft.base, value, path, lines, f"{prefix}{name}."))
        else:
            values[prefix + name] = coerce(value, ft, where)
    return values


def dump_yaml(config, path: str, command: str) -> None:
    """Write ``config`` (a dataclass or a dict) as YAML, through a temporary file and a rename:
    ``minichatgpt COMMAND --config PATH`` alone reruns the same configuration."""
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    header = (f"# Resolved configuration of `minichatgpt {command}`; "
              f"rerun it with `minichatgpt {command} --config {os.path.basename(path)}`\n")
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    os.replace(tmp, path)
