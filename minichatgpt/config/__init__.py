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

from .fields import (LENGTH, NON_NEGATIVE, NON_NEGATIVE_INT, PORT, POSITIVE, POSITIVE_INT, SEED, TOP_P, UNIT, FieldType, Rule,
                     UsageError, build, coerce, dotted_types, field_defaults, field_type, fields_of, option, resolve,
                     validate)
from .files import dump_yaml, load_yaml
from .parser import ConfigParser, add_arguments, parse, spellings

__all__ = ["LENGTH", "NON_NEGATIVE", "NON_NEGATIVE_INT", "PORT", "POSITIVE", "POSITIVE_INT", "SEED", "TOP_P", "UNIT",
           "FieldType", "Rule",
           "UsageError", "build", "coerce", "dotted_types", "field_defaults", "field_type", "fields_of", "option",
           "resolve", "validate", "dump_yaml", "load_yaml", "ConfigParser", "add_arguments", "parse", "spellings"]
