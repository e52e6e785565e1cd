"""The collapse remedies a search can ask for, and their options (no torch here: the command line checks them
before anything heavy is imported; :mod:`nasplat.searching.remedies` implements them).

Option names are distinct across remedies, so ``--remedy-option KEY=VALUE`` needs no prefix; a key of a remedy
that is not chosen is refused, as a misspelt one.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from nasplat.training.config import ConfigError, is_number

NO_REMEDY = "none"
REMEDY_OPTIONS: dict[str, dict[str, float]] = {
    "sdarts": {"epsilon_min": 0.03, "epsilon_max": 0.3},
    "beta_decay": {"beta_weight": 50.0},
    "entropy": {"entropy_weight": 2.0, "entropy_start": 0.0},
    "darts_minus": {"aux_skip_weight": 1.0},
    "skip_dropout": {"skip_dropout_rate": 0.7},
    "sgas": {"sgas_start": 0.2, "sgas_post": 0.1},
}
"""Remedy name -> its options and their defaults (what each means: :mod:`nasplat.searching.remedies`)."""
REMEDY_CHOICES = (NO_REMEDY, *REMEDY_OPTIONS)
FRACTIONS = ("entropy_start", "skip_dropout_rate", "sgas_start", "sgas_post")
"""Options that are a fraction of the search (0 <= x < 1)."""


def resolve_remedies(names: Sequence[str], options: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Remedy name -> its options (defaults overridden by ``options``), in the order given; ``["none"]`` or ``[]``
    gives ``{}``. ConfigError naming the field and the value for an unknown name, a repeated one, ``none`` beside
    others, an option of no chosen remedy, or a value out of range."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ConfigError(f"config field 'remedy' must be a list of names from {REMEDY_CHOICES}, got {names!r}")
    unknown = [n for n in names if n not in REMEDY_CHOICES]
    if unknown:
        raise ConfigError(f"config field 'remedy': unknown remedy {unknown[0]!r} (choose from {REMEDY_CHOICES})")
    if len(set(names)) != len(names) or (NO_REMEDY in names and len(names) > 1):
        raise ConfigError(f"config field 'remedy' must name each remedy once, and 'none' alone, got {list(names)}")
    chosen = {name: dict(REMEDY_OPTIONS[name]) for name in names if name != NO_REMEDY}
    owners = {key: name for name, defaults in REMEDY_OPTIONS.items() for key in defaults}
    for key, value in options.items():
        if owners.get(key) not in chosen:
            known = [k for name in chosen for k in REMEDY_OPTIONS[name]]
            what = f"an option of remedy {owners[key]!r}, which is not chosen" if key in owners else "unknown"
            chosen_text = f"options of the chosen remedies: {known}" if known else "no remedy is chosen"
            raise ConfigError(f"config field 'remedy_options': {key!r} is {what} ({chosen_text})")
        if not is_number(value) or value < 0 or (key in FRACTIONS and value >= 1):
            bound = "in [0, 1)" if key in FRACTIONS else ">= 0"
            raise ConfigError(f"config field 'remedy_options': {key} must be a number {bound}, got {value!r}")
        chosen[owners[key]][key] = float(value)
    sdarts = chosen.get("sdarts")
    if sdarts and sdarts["epsilon_min"] > sdarts["epsilon_max"]:
        raise ConfigError(f"config field 'remedy_options': epsilon_min ({sdarts['epsilon_min']:g}) must not exceed "
                          f"epsilon_max ({sdarts['epsilon_max']:g})")
    sgas = chosen.get("sgas")
    if sgas and sgas["sgas_start"] + sgas["sgas_post"] >= 1:
        raise ConfigError(f"config field 'remedy_options': sgas_start ({sgas['sgas_start']:g}) + sgas_post "
                          f"({sgas['sgas_post']:g}) must leave part of the search for the decisions (sum < 1)")
    return chosen
