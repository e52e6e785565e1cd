"""Command-line flags from a config dataclass, and the config back from parsed flags and a YAML file.

One flag per field (``--flag-name`` sets ``flag_name``); mapping fields take ``--NAME KEY=VALUE``
repeatedly; list fields take several values. Flags given on the command line override the file.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Mapping, Sequence

import yaml

from nasplat.training.config import ConfigError, load_config_file


def parse_key_values(flag: str, items: Sequence[str]) -> dict[str, Any]:
    """``["C=8", "lr=1e-3"]`` -> ``{"C": 8, "lr": 0.001}``; values are read as YAML."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "1e9" as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        options[key] = parsed
    return options


def _optional_type(field: dataclasses.Field) -> type:
    """The value type of a field declared ``X | None`` (``float | None`` -> float; str otherwise)."""
    declared = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "str")
    return {"float": float, "int": int}.get(declared.split("|")[0].strip(), str)


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """How a config dataclass becomes flags: the fields that need special handling (help and choices come
    from the fields' metadata)."""

    config_type: type
    mapping_flags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """field -> repeatable KEY=VALUE flag (``space_options`` -> ``--space-option``)"""
    list_flags: Mapping[str, tuple[type, int | str]] = dataclasses.field(default_factory=dict)
    """field -> (element type, nargs)"""

    def add_arguments(self, parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
        """``--config FILE`` plus one flag per field; absent flags leave no attribute (the file or default wins)."""
        parser.add_argument("--config", help="YAML file of options (keys = option names with underscores)")
        defaults = self.config_type()
        for field in dataclasses.fields(self.config_type):
            if field.name in skip:
                continue
            default = getattr(defaults, field.name)
            help_text = field.metadata["help"] + ("" if default is None else f" (default: {default})")
            flag = "--" + field.name.replace("_", "-")
            common = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_text}
            if "choices" in field.metadata:
                common["choices"] = field.metadata["choices"]
            if field.name in self.mapping_flags:
                parser.add_argument(self.mapping_flags[field.name], action="append", metavar="KEY=VALUE", **common)
            elif field.name in self.list_flags:
                kind, nargs = self.list_flags[field.name]
                parser.add_argument(flag, type=kind, nargs=nargs, **common)
            elif isinstance(default, bool):
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
            else:
                kind = type(default) if default is not None else _optional_type(field)
                parser.add_argument(flag, type=kind, **common)

    def add_parser(self, subparsers, name: str, handler, **texts: str) -> argparse.ArgumentParser:
        """A subcommand ``name`` (``help=``, ``description=`` in ``texts``) with these flags, run by ``handler``."""
        parser = subparsers.add_parser(name, **texts)
        self.add_arguments(parser)
        parser.set_defaults(handler=handler)
        return parser

    def config_from_args(self, args: argparse.Namespace) -> Any:
        """Defaults < the ``--config`` file < the flags given; validated by ``config_type.from_dict``."""
        values: dict[str, Any] = {}
        source = "command line"
        if getattr(args, "config", None):
            values.update(load_config_file(args.config))
            source = args.config
        flags = {k: v for k, v in vars(args).items() if k in self.config_type.field_names()}
        for name, flag in self.mapping_flags.items():
            if name in flags:
                flags[name] = {**values.get(name, {}), **parse_key_values(flag, flags[name])}
        values.update(flags)
        return self.config_type.from_dict(values, source=source)
