"""``nasplat profile-ops``: measure every candidate op of a space on this machine into a cost table.

The table is what ``nasplat search --cost latency --cost-table FILE`` reads (:mod:`nasplat.searching.cost_table`):
one entry per op at each input shape the space's cost model names for ``--image-size`` and ``--space-option``s,
with its median latency, GFLOPs and parameters.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nasplat.searching.config import SearchConfig

NOISY = 0.5
"""An op's timing counts as noisy when its interquartile range exceeds this fraction of its median."""


def add_parser(subparsers) -> None:
    """Register the ``profile-ops`` subcommand."""
    helps = SearchConfig.help_texts()
    parser = subparsers.add_parser(
        "profile-ops", help="measure the latency of a space's candidate ops into a cost table (for --cost latency)",
        description="Build each candidate op of the space at every input shape its searched network uses (the "
        "space's cost model, for this image size and these supernet options), time REPEATS forward passes of "
        "each at batch 1 and write the median latency, GFLOPs and parameters per op to --out. Run it on the "
        "machine (CPU or GPU) the searched model is meant for, with the image size and space options of the "
        "search: `nasplat search --cost latency --cost-table FILE` refuses a table that does not cover them.",
    )
    parser.add_argument("--space", default=SearchConfig.space, help=helps["space"])
    parser.add_argument("--image-size", type=int, default=SearchConfig.image_size, help=helps["image_size"])
    parser.add_argument("--space-option", dest="space_options", action="append", default=[], metavar="KEY=VALUE",
                        help=helps["space_options"])
    parser.add_argument("--out", required=True, metavar="FILE", help="the cost table to write (JSON)")
    parser.add_argument("--device", default="auto", help="where to time the ops: auto (cuda when there is one, "
                        "else cpu), cpu, cuda or cuda:N")
    parser.add_argument("--repeats", type=int, default=20, help="timed forward passes per op (the median counts)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forward passes per op first")
    parser.set_defaults(handler=run_profile)


def _device(name: str) -> str:
    """``auto`` -> cuda when available, else cpu; ConfigError for a CUDA device this machine lacks."""
    import torch

    from nasplat.training.config import ConfigError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this machine has no CUDA device (use --device cpu)")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return name


def run_profile(args: argparse.Namespace) -> int:
    """Profile the space's op shapes and write the table; returns the exit status."""
    from nasplat.searching.cost_search import cost_model_of
    from nasplat.searching.cost_table import machine_description, profile_ops, save_table
    from nasplat.spaces.registry import get_space
    from nasplat.training.config import ConfigError

    from pipelines.config_args import parse_key_values

    if args.repeats < 1 or args.warmup < 0 or args.image_size < 1:
        raise ConfigError("--repeats and --image-size must be >= 1 and --warmup >= 0, got "
                          f"{args.repeats}, {args.image_size}, {args.warmup}")
    options = parse_key_values("--space-option", args.space_options)
    config = SearchConfig(space=args.space, image_size=args.image_size, space_options=options, cost="flops")
    space = get_space(config.space)
    shapes = cost_model_of(config, space).op_shapes()
    device = _device(args.device)
    print(f"[nasplat] profiling {len(shapes)} op shapes of space {space.name!r} at image size {args.image_size} "
          f"on {device}", file=sys.stderr, flush=True)

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            print(f"[nasplat] {done}/{total} ops timed", file=sys.stderr, flush=True)

    entries = profile_ops(shapes, repeats=args.repeats, warmup=args.warmup, device=device, progress=progress)
    meta = {"space": space.name, "image_size": args.image_size, "space_options": options,
            "repeats": args.repeats, "warmup": args.warmup, "machine": machine_description(device)}
    path = save_table(Path(args.out).expanduser().resolve(), entries, meta)
    noisy = [shape.key for shape, entry in entries.items() if entry["latency_iqr_ms"] > NOISY * entry["latency_ms"]]
    if noisy:
        print(f"[nasplat] warning: {len(noisy)} of {len(entries)} ops timed with an interquartile range above "
              f"{NOISY:.0%} of their median (e.g. {noisy[0]}): the machine was busy; profile again when it is idle "
              "or with more --repeats", file=sys.stderr, flush=True)
    print(f"[nasplat] cost table of {len(entries)} ops written to {path}  (nasplat search --space {space.name} "
          f"--image-size {args.image_size} --cost latency --cost-table {path})")
    return 0
