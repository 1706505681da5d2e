"""Command lines: a config dataclass's flags (``ConfigParser``) and ``parse`` into a checked config."""

import argparse
import dataclasses
import sys
from typing import Any, Callable, Dict, List, Optional, Type

from .fields import NONE_WORDS, FieldType, T, field_defaults, fields_of, resolve, validate
from .files import load_yaml

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


def add_arguments(parser: argparse.ArgumentParser, cls, keep_defaults: bool = False) -> None:
    """One flag per field of ``cls`` (sections excluded). Defaults are left out of the namespace
    (``SUPPRESS``), so a parsed namespace holds exactly the flags that were given; ``keep_defaults``
    puts them in, for a plain ``argparse`` namespace of every field."""
    defaults = field_defaults(cls)
    for f, ft in fields_of(cls):
        if dataclasses.is_dataclass(ft.base):
            continue
        names = [f"--{name}" for name in (f.name,) + f.metadata.get("aliases", ())]
        default = defaults[f.name] if keep_defaults else argparse.SUPPRESS
        kwargs: Dict[str, Any] = dict(dest=f.name, default=default,
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


def parse(cls: Type[T], argv: Optional[List[str]] = None, preset=None, **parser_kwargs) -> T:
    """Parse ``argv`` into a checked ``cls``: defaults < ``preset`` < ``--config`` < flags."""
    config = ConfigParser(cls, preset, **parser_kwargs).parse_args(argv)
    validate(config)
    return config
