"""Command-line flags from a config dataclass, and the config back from parsed flags and a YAML file.

One flag per field (``--flag-name`` sets ``flag_name``); mapping fields take ``--NAME KEY=VALUE``
repeatedly; list fields take several values. Flags given on the command line override the file.
Also the conventions every ``nasplat`` command shares: defaults shown once as ``(default: X)``
(:func:`with_default`, :class:`HelpFormatter`) and old spellings kept as hidden aliases
(:class:`DeprecatedAlias`).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import sys
from typing import Any, Callable, Mapping, Sequence

import yaml

from nasplat.training.config import ConfigError, load_config_file


def with_default(help_text: str, default: Any) -> str:
    """``help_text`` plus `` (default: X)``, unless it states its default already or there is none to show
    (None, an empty list or mapping); list items are shown space-separated, as typed."""
    if re.search(r"\(default\b", help_text) or default is None or default == argparse.SUPPRESS:
        return help_text
    if isinstance(default, (list, tuple, dict)):
        if not default:
            return help_text
        default = " ".join(f"{k}={v}" for k, v in default.items()) if isinstance(default, dict) else \
            " ".join(str(item) for item in default)
    return f"{help_text} (default: {str(default).replace('%', '%%')})"


class HelpFormatter(argparse.HelpFormatter):
    """Adds each option's default to its help with :func:`with_default` (``store_true`` flags show none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if not action.option_strings or (action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)):
            return help_text
        return with_default(help_text, action.default)


class CommandParser(argparse.ArgumentParser):
    """The parser of ``nasplat`` and its subcommands (which inherit the class): :class:`HelpFormatter` by default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


class DeprecatedAlias(argparse.Action):
    """An old spelling kept for one release: hidden from ``--help``, it prints a one-line deprecation warning on
    stderr and stores what the new option would. ``targets``: one destination per value when the old flag took
    several values that are separate options now; with ``nargs=0`` it stores ``const``."""

    def __init__(self, option_strings: Sequence[str], dest: str, replacement: str,
                 targets: Sequence[str] = (), **kwargs: Any) -> None:
        kwargs.setdefault("default", argparse.SUPPRESS)
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.replacement = replacement
        self.targets = tuple(targets)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"nasplat: warning: {option_string} is deprecated and will be removed in the next release; "
              f"use {self.replacement}", file=sys.stderr)
        value = self.const if self.nargs == 0 else values
        if self.targets:
            for target, item in zip(self.targets, value):
                setattr(namespace, target, item)
        else:
            setattr(namespace, self.dest, value)


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
    metavars: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """field -> the value's name in ``--help`` (``from_run`` -> ``RUN_ID``)"""
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """field -> this command's default where it differs from the config's (below the ``--config`` file)"""

    def all_mapping_flags(self) -> dict[str, str]:
        """``mapping_flags``, plus ``--field-name`` for every other mapping field (``--resume-override``)."""
        defaults = self.config_type()
        return {**{f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(self.config_type)
                   if isinstance(getattr(defaults, f.name), dict)}, **self.mapping_flags}

    def add_arguments(self, parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
        """``--config FILE`` plus one flag per field; absent flags leave no attribute (the file or default wins)."""
        parser.add_argument("--config", metavar="FILE",
                            help="YAML file of options (keys = option names with underscores)")
        defaults = self.config_type().replace(**self.defaults)
        mapping_flags = self.all_mapping_flags()
        for field in dataclasses.fields(self.config_type):
            if field.name in skip:
                continue
            default = getattr(defaults, field.name)
            flag = "--" + field.name.replace("_", "-")
            common = {"dest": field.name, "default": argparse.SUPPRESS,
                      "help": with_default(field.metadata["help"], default)}
            if "choices" in field.metadata:
                common["choices"] = field.metadata["choices"]
            if field.name in self.metavars or "metavar" in field.metadata:
                common["metavar"] = self.metavars.get(field.name, field.metadata.get("metavar"))
            if field.name in mapping_flags:
                parser.add_argument(mapping_flags[field.name], action="append", metavar="KEY=VALUE", **common)
            elif field.name in self.list_flags:
                kind, nargs = self.list_flags[field.name]
                parser.add_argument(flag, type=kind, nargs=nargs, **common)
            elif isinstance(default, bool):
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
            else:
                kind = type(default) if default is not None else _optional_type(field)
                parser.add_argument(flag, type=kind, **common)

    def add_parser(self, subparsers, name: str, handler: Callable[[argparse.Namespace], int],
                   **texts: str) -> argparse.ArgumentParser:
        """A subcommand ``name`` (``help=``, ``description=`` in ``texts``) with these flags and ``--print-config``,
        run by ``handler``."""
        parser = subparsers.add_parser(name, **texts)
        self.add_arguments(parser)
        parser.add_argument("--print-config", action="store_true", help="print the config that would run (the "
                            "defaults, then the --config file, then the flags) as YAML and exit without running it")
        parser.set_defaults(handler=functools.partial(self.print_or_run, handler))
        return parser

    def print_or_run(self, handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
        """With ``--print-config``: print the resolved config as YAML and return 0; else ``handler(args)``."""
        if not getattr(args, "print_config", False):
            return handler(args)
        print(self.config_from_args(args).to_yaml(), end="", flush=True)
        return 0

    def config_from_args(self, args: argparse.Namespace) -> Any:
        """Defaults (this command's, then the config's) < the ``--config`` file < the flags given; validated by
        ``config_type.from_dict``. With ``--resume``: the run's stored settings, changed only by
        ``--resume-override``; other options given must agree with them (``run_folder.resumed_config``)."""
        given: dict[str, Any] = {}
        source = "command line"
        if getattr(args, "config", None):
            given.update(load_config_file(args.config))
            source = args.config
        flags = {k: v for k, v in vars(args).items() if k in self.config_type.field_names()}
        for name, flag in self.all_mapping_flags().items():
            if name in flags:
                flags[name] = {**{**self.defaults, **given}.get(name, {}), **parse_key_values(flag, flags[name])}
        given.update(flags)
        if given.get("resume"):
            from nasplat.runtime.run_folder import resumed_config

            return resumed_config(self.config_type, given)
        return self.config_type.from_dict({**self.defaults, **given}, source=source)
