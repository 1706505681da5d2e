"""Config fields: ``option`` declares one; its annotation, rule and choices check a value.

Also: build an instance from dotted keys (``resolve``, ``build``) and check one (``validate``).
"""

import dataclasses
import math
import typing
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Type, TypeVar

T = TypeVar("T")
Rule = Tuple[str, Callable[[Any], bool]]  # (what a valid value is, in words; predicate)

POSITIVE_INT: Rule = ("an integer >= 1", lambda v: v >= 1)
NON_NEGATIVE_INT: Rule = ("an integer >= 0", lambda v: v >= 0)
LENGTH: Rule = ("an integer >= 2", lambda v: v >= 2)
POSITIVE: Rule = ("a finite number > 0", lambda v: v > 0)
NON_NEGATIVE: Rule = ("a finite number >= 0", lambda v: v >= 0)
UNIT: Rule = ("a number in [0, 1]", lambda v: 0 <= v <= 1)
SEED: Rule = ("an integer in [0, 2**32 - 1]", lambda v: 0 <= v < 2 ** 32)
TOP_P: Rule = ("a number in (0, 1]", lambda v: 0 < v <= 1)
PORT: Rule = ("a port number in [0, 65535]", lambda v: 0 <= v <= 65535)

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


def field_defaults(cls) -> Dict[str, Any]:
    """Field name -> default value (a fresh one for fields with a factory)."""
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)}


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
