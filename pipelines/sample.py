"""``nasplat sample-genotype``: a uniformly random genotype of a search space, as JSON (printed as search prints)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nasplat.searching.config import SearchConfig


def add_parser(subparsers) -> None:
    """Register the ``sample-genotype`` subcommand."""
    parser = subparsers.add_parser(
        "sample-genotype", help="print or write a uniformly random genotype of a search space",
        description="Draw a genotype uniformly from a search space (SearchSpace.sample) and print it as JSON, "
        "or write it to --out. The same seed always gives the same genotype; use it as a random-search baseline "
        "(`nasplat retrain` takes the file like a searched genotype). The genotype follows the decode rules of "
        "`nasplat search`'s defaults (the space's search defaults, e.g. darts: at most 2 skip_connect in the normal "
        "cell), so it is drawn from the space the search chooses from.",
    )
    parser.add_argument("--space", default=SearchConfig.space, help=SearchConfig.help_texts()["space"])
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--space-option", dest="space_options", action="append", default=[], metavar="KEY=VALUE",
                        help="supernet option that shapes the genotype, repeatable, over the space's search "
                        "defaults (autodeeplab: L=12, B=5, beta_norm=paper; darts: max_skip_normal=2 by default, "
                        "max_skip_normal=null for the paper's uncapped decode)")
    parser.add_argument("--out", help="write the JSON to this file instead of printing it")
    parser.set_defaults(handler=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    """Sample, then print the JSON or write it to ``--out``; returns the exit status."""
    from nasplat import get_space, save_genotype
    from nasplat.training.config import ConfigError

    from pipelines.config_args import parse_key_values
    from pipelines.search import format_genotype

    space = get_space(args.space)
    options = {**space.search_defaults, **parse_key_values("--space-option", args.space_options)}
    try:
        genotype = space.sample(args.seed, **options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--space-option {options}: {err}") from err
    if args.out:
        path = save_genotype(genotype, Path(args.out).expanduser().resolve())
        print(f"[nasplat] {space.name} genotype {genotype.short_hash()} (seed {args.seed}) written to {path}",
              file=sys.stderr)
    else:
        print(format_genotype(genotype))
    return 0
