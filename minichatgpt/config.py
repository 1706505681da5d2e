"""Typed run configurations: one dataclass per command, its flags generated from its fields.

A field is declared with :func:`option`: its type (the annotation), default, help, old spellings
(``aliases``) and range ``rule`` sit together, so a flag and its check are written once. Values are
layered, later wins::

    field defaults < preset (the built-in task's defaults) < --config FILE.yaml < command-line flags

A nested dataclass field is a YAML section (the pipeline's ``sft:``, ``rm:``, ``ppo:``); it has no
flags of its own. :func:`validate` checks every field's rule and then the dataclass's own ``check()``
(combinations of fields), raising :class:`UsageError` that names the flag as the user spelled it; a
bad YAML key or value names the file and line. :func:`dump_yaml` writes the resolved configuration,
and ``--config`` of that file alone reproduces the run.

Hand-written rather than ``transformers.HfArgumentParser``: that parser has no layering of a YAML file
under command-line flags, no per-field range rules and no nested sections.
"""

import argparse
import dataclasses
import difflib
import math
import os
import sys
import typing
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Type, TypeVar

import yaml

T = TypeVar("T")
Rule = Tuple[str, Callable[[Any], bool]]  # (what a valid value is, in words; predicate)

POSITIVE_INT: Rule = ("an integer >= 1", lambda v: v >= 1)
NON_NEGATIVE_INT: Rule = ("an integer >= 0", lambda v: v >= 0)
LENGTH: Rule = ("an integer >= 2", lambda v: v >= 2)
POSITIVE: Rule = ("a finite number > 0", lambda v: v > 0)
NON_NEGATIVE: Rule = ("a finite number >= 0", lambda v: v >= 0)
UNIT: Rule = ("a number in [0, 1]", lambda v: 0 <= v <= 1)
SEED: Rule = ("an integer in [0, 2**32 - 1]", lambda v: 0 <= v < 2 ** 32)

NONE_WORDS = ("none", "null")


class UsageError(Exception):
    """A bad flag value, config file or launch environment, found before training; names the flag."""


def option(default: Any = None, help: str = "", *, aliases: Tuple[str, ...] = (), rule: Optional[Rule] = None,
           choices: Optional[tuple] = None, metavar: Optional[str] = None,
           default_factory: Optional[Callable[[], Any]] = None) -> Any:
    """A config field: ``default`` (or ``default_factory`` for lists and sections), ``help``, old flag
    spellings still accepted (``aliases``, without dashes), the range ``rule`` its value must meet and
    its allowed values (``choices``, when a ``Literal`` annotation cannot list them)."""
    metadata = {"help": help, "aliases": tuple(aliases), "rule": rule, "choices": choices, "metavar": metavar}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# field types
# ---------------------------------------------------------------------------------------------
class FieldType(typing.NamedTuple):
    """A field's annotation taken apart: the scalar (or dataclass) type, whether None is allowed,
    the allowed values of a ``Literal``, and whether it is a list of scalars."""
    base: Any
    optional: bool
    choices: Optional[tuple]
    is_list: bool


def field_type(annotation) -> FieldType:
    optional, is_list, choices = False, False, None
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and type(None) in args:
        optional = True
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) in (list, List):
        is_list, annotation = True, typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        annotation = type(choices[0])
    return FieldType(annotation, optional, choices, is_list)


def fields_of(cls) -> List[Tuple[dataclasses.Field, FieldType]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        ft = field_type(hints[f.name])
        if f.metadata.get("choices"):
            ft = ft._replace(choices=tuple(f.metadata["choices"]))
        out.append((f, ft))
    return out


def _type_name(ft: FieldType) -> str:
    name = "one of " + ", ".join(map(repr, ft.choices)) if ft.choices else \
        {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(ft.base, str(ft.base))
    return ("a list of " + name if ft.is_list else name) + (" or null" if ft.optional else "")


def coerce(value: Any, ft: FieldType, where: str) -> Any:
    """``value`` (from YAML, or a preset) as the field's type; a UsageError naming ``where`` otherwise.

    YAML 1.1 reads ``1e-3`` as a string, so numbers may come as strings; an int is a valid float."""
    if value is None and ft.optional:
        return None
    if ft.is_list:
        items = value if isinstance(value, list) else [value]
        return [coerce(v, ft._replace(is_list=False, optional=False), where) for v in items]
    converted: Any = value
    if ft.base is bool:
        ok = isinstance(value, bool)
    elif ft.base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif ft.base is float:
        try:
            converted = float(value) if not isinstance(value, bool) else value
            ok = not isinstance(value, bool)
        except (TypeError, ValueError):
            ok = False
    else:
        ok = isinstance(value, ft.base)
    if ok and ft.choices and converted not in ft.choices:
        ok = False
    if not ok:
        raise UsageError(f"{where} must be {_type_name(ft)}, got {value!r}")
    return converted


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def _cli_type(ft: FieldType) -> Callable[[str], Any]:
    def convert(text: str):
        if ft.optional and text.lower() in NONE_WORDS:
            return None
        return ft.base(text)

    convert.__name__ = getattr(ft.base, "__name__", "value")  # argparse names it in "invalid int value"
    return convert


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    return repr(f.default_factory()) if f.default_factory is not dataclasses.MISSING else "required"


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of ``cls`` (sections excluded). Defaults are left out of the namespace
    (``SUPPRESS``), so a parsed namespace holds exactly the flags that were given."""
    for f, ft in fields_of(cls):
        if dataclasses.is_dataclass(ft.base):
            continue
        names = [f"--{name}" for name in (f.name,) + f.metadata.get("aliases", ())]
        kwargs: Dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS,
                                      help=f"{f.metadata.get('help', '')} (default: {_default_text(f)})")
        if ft.base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=_cli_type(ft), choices=ft.choices,
                          metavar=f.metadata.get("metavar") or (None if ft.choices else f.name.upper()))
            if ft.is_list:
                kwargs.update(nargs="+", action="extend")
        parser.add_argument(*names, **kwargs)


class ConfigParser(argparse.ArgumentParser):
    """The flags of a config dataclass plus ``--config FILE.yaml``; ``parse_args`` returns the dataclass.

    ``preset(values)`` gets the values the file and the flags give (dotted keys for sections) and
    returns defaults for the others, e.g. the built-in task's sizes when no model or data is given."""

    def __init__(self, config_cls, preset: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)
        self.config_cls, self.preset = config_cls, preset
        self.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE.yaml",
                          help="a YAML file of this command's fields (e.g. the config.yaml a run wrote); flags "
                               "given on the command line override it")
        add_arguments(self, config_cls)

    def given_values(self, args: Optional[List[str]] = None) -> Dict[str, Any]:
        """What ``--config`` and the flags set (flags win), as dotted keys; no defaults."""
        namespace = vars(super().parse_args(args))
        config_path = namespace.pop("config", None)
        values = load_yaml(self.config_cls, config_path) if config_path else {}
        values.update(namespace)
        return values

    def parse_args(self, args=None, namespace=None):
        """The config dataclass (unchecked: see :func:`validate`) of ``args``, layered as the module says;
        ``self.given`` keeps what the file and the flags set."""
        argv = list(sys.argv[1:] if args is None else args)
        self.given = self.given_values(argv)
        config = resolve(self.config_cls, self.given, self.preset)
        object.__setattr__(config, "_spellings", spellings(self, argv))
        return config


def spellings(parser: argparse.ArgumentParser, argv: List[str]) -> Dict[str, str]:
    """Field name -> the flag as the user wrote it (an old spelling such as ``--eps_clip``), for messages."""
    written = {}
    for action in parser._actions:
        for name in action.option_strings:
            if any(item == name or item.startswith(name + "=") for item in argv):
                written[action.dest] = name
    return written


# ---------------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------------
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


def field_defaults(cls) -> Dict[str, Any]:
    """Field name -> default value (a fresh one for fields with a factory)."""
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)}


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


# ---------------------------------------------------------------------------------------------
# building and checking
# ---------------------------------------------------------------------------------------------
def build(cls: Type[T], values: Dict[str, Any], prefix: str = "") -> T:
    """An instance of ``cls`` from dotted keys (missing keys keep the field defaults)."""
    kwargs = {}
    for f, ft in fields_of(cls):
        if dataclasses.is_dataclass(ft.base):
            kwargs[f.name] = build(ft.base, values, f"{prefix}{f.name}.")
        elif prefix + f.name in values:
            kwargs[f.name] = values[prefix + f.name]
    return cls(**kwargs)


def resolve(cls: Type[T], given: Dict[str, Any],
            preset: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None) -> T:
    """``cls`` from the given values over ``preset(given)`` over the field defaults, each converted to
    its field's type."""
    values = {**(preset(given) if preset else {}), **given}
    types = dotted_types(cls)
    return build(cls, {key: coerce(value, types[key], f"--{key}") for key, value in values.items()})


def dotted_types(cls, prefix: str = "") -> Dict[str, FieldType]:
    types = {}
    for f, ft in fields_of(cls):
        if dataclasses.is_dataclass(ft.base):
            types.update(dotted_types(ft.base, f"{prefix}{f.name}."))
        else:
            types[prefix + f.name] = ft
    return types


def validate(config, sections: bool = True) -> None:
    """Every field's rule (finite numbers in range), then ``config.check()`` for combinations (and the
    same for each section unless ``sections=False``); the first problem is a UsageError naming the flag
    as it was written."""
    written = getattr(config, "_spellings", {})
    for f, ft in fields_of(type(config)):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(ft.base):
            if sections:
                validate(value)
            continue
        rule = f.metadata.get("rule")
        if rule is None or value is None or isinstance(value, bool):
            continue
        expected, ok = rule
        for item in value if ft.is_list else [value]:
            if isinstance(item, float) and not math.isfinite(item) or not ok(item):
                raise UsageError(f"{written.get(f.name, '--' + f.name)} must be {expected}, got {item!r}")
    check = getattr(config, "check", None)
    if callable(check):
        check()


def parse(cls: Type[T], argv: Optional[List[str]] = None, preset=None, **parser_kwargs) -> T:
    """Parse ``argv`` into a checked ``cls``: defaults < ``preset`` < ``--config`` < flags."""
    config = ConfigParser(cls, preset, **parser_kwargs).parse_args(argv)
    validate(config)
    return config
