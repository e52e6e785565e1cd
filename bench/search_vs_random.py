"""Is the search worth it? The searched genotype against genotypes drawn uniformly from its space.

Retrains, on the synthetic scenes, the genotype found by a search and ``--random N`` genotypes
drawn with ``SearchSpace.sample(k)`` for k = 0..N-1 from the same space, each over the retrain
seeds 0..S-1 (``--seeds S``). Every network gets the same budget, seeds, data and model options:
one process, no Ray, :class:`nasplat.retraining.loop.Retrainer` with a ``RetrainConfig`` that differs
from ``nasplat retrain``'s defaults only in ``workers=1`` and the budget flags below. The seed fixes
the synthetic data, the initialisation and the sample order, as ``nasplat retrain --seed`` does.

The searched genotype comes from ``--genotype FILE``, from ``--from-run RUN_ID`` (a search's
parent or trial run in ``--tracking-uri``) or, with neither, from running ``nasplat search`` with
its defaults (about 5 minutes on 2 CPU cores) in ``--workdir``; the next run can take the
``genotype.json`` it leaves there with ``--genotype``.

Prints a markdown table to stdout (progress goes to stderr): genotype, hash, parameters, val mIoU
after the last epoch (mean, min-max and each seed's value), the mean of the best epoch's mIoU (what
``nasplat retrain`` reports; that epoch is chosen on the validation split), then a line with the
searched genotype's rank by mean last-epoch mIoU.

    python bench/search_vs_random.py [--genotype FILE | --from-run RUN_ID] [--random 5] [--seeds 2]
        [--epochs 10] [--image-size 48] [--train-samples 384]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nasplat.training.config import ConfigError
from nasplat.spaces.genotype import Genotype, GenotypeError
from nasplat.spaces.registry import genotype_from_dict
from nasplat.training.model_stats import count_parameters
from nasplat.retraining.config import GENOTYPE_DEFAULT_OPTIONS, RetrainConfig
from nasplat.retraining.loop import Retrainer
from nasplat.spaces.registry import get_space

SEARCH_NAME = "bench-search"


@dataclass
class Result:
    """One genotype's retrains: last-epoch and best-epoch val mIoU, one value per seed."""

    label: str
    genotype: Genotype
    params: int
    last: list[float]
    best: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.last)


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run_default_search(workdir: Path, epochs: int | None) -> Genotype:
    """``nasplat search`` with its defaults (``--epochs`` only if given), files under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pipelines.cli", "search", "--name", SEARCH_NAME,
               "--storage", str(workdir / "nasplat_runs"), "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}"]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    _log(f"no --genotype or --from-run: running `{' '.join(command[2:])}`")
    # the search's stdout goes to stderr: stdout carries only the table
    subprocess.run(command, cwd=REPO, check=True, stdout=sys.stderr)
    path = workdir / "nasplat_runs" / SEARCH_NAME / "genotype.json"
    _log(f"searched genotype: {path} (pass --genotype {path} to skip the search next time)")
    return genotype_from_dict(json.loads(path.read_text()))


def searched_genotype(args: argparse.Namespace) -> Genotype:
    """The genotype under test: from a file, from an MLflow search run, or from a fresh default search."""
    if args.genotype:
        from nasplat.spaces.registry import load_genotype

        return load_genotype(Path(args.genotype).expanduser().resolve())
    if args.from_run:
        from nasplat.tracking.uri import resolve_tracking_uri
        from nasplat.tracking.queries import genotype_from_run

        genotype, _ = genotype_from_run(resolve_tracking_uri(args.tracking_uri, create=False), args.from_run)
        return genotype_from_dict(genotype)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="nasplat-bench-"))
    return run_default_search(workdir.expanduser().resolve(), args.search_epochs)


def retrain(label: str, genotype: Genotype, args: argparse.Namespace) -> Result:
    """Retrain ``genotype`` once per seed; val mIoU after the last epoch and at the best epoch."""
    last, best, params = [], [], 0
    for seed in range(args.seeds):
        config = RetrainConfig(epochs=args.epochs, image_size=args.image_size, train_samples=args.train_samples,
                               val_samples=args.val_samples, batch_size=args.batch_size, workers=1, seed=seed)
        started = time.perf_counter()
        trainer = Retrainer(config, {"genotype": genotype.to_dict()}, device=args.device)
        params = count_parameters(trainer.model)
        for _ in range(args.epochs):
            trainer.train_epoch()
            metrics = trainer.evaluate()
            trainer.update_best(metrics)
        last.append(float(metrics["val_miou"]))
        best.append(float(trainer.best["val_miou"]))
        _log(f"{label} ({genotype.short_hash()}) seed {seed}: val mIoU last {last[-1]:.4f}, best {best[-1]:.4f} "
             f"(epoch {trainer.best['epoch']}), {time.perf_counter() - started:.0f} s")
    return Result(label, genotype, params, last, best)


def format_table(results: list[Result]) -> str:
    """The markdown table, one row per genotype, in the order given."""
    lines = ["| genotype | hash | params | mIoU mean | min-max | per seed | best-epoch mIoU mean |",
             "|---|---|---:|---:|---|---|---:|"]
    for r in results:
        per_seed = ", ".join(f"{v:.3f}" for v in r.last)
        lines.append(f"| {r.label} | `{r.genotype.short_hash()}` | {r.params:,} | {r.mean:.3f} | "
                     f"{min(r.last):.3f}-{max(r.last):.3f} | {per_seed} | {statistics.fmean(r.best):.3f} |")
    return "\n".join(lines)


def verdict(searched: Result, randoms: list[Result]) -> str:
    """Where the searched genotype ranks among all genotypes by mean last-epoch mIoU (1 = best)."""
    if not randoms:
        return f"Only the searched genotype was retrained (mean val mIoU {searched.mean:.3f})."
    rank = 1 + sum(r.mean > searched.mean for r in randoms)
    ties = sum(r.mean == searched.mean for r in randoms)
    tied = f", tied with {ties} random genotype(s)" if ties else ""
    best = max(randoms, key=lambda r: r.mean)
    random_means = [r.mean for r in randoms]
    return (f"The searched genotype ranks {rank} of {len(randoms) + 1} by mean val mIoU{tied} "
            f"({searched.mean:.3f}; random genotypes: median {statistics.median(random_means):.3f}, "
            f"best {best.mean:.3f} ({best.label}), worst {min(random_means):.3f}).")


def _at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Retrain the searched genotype and N uniformly sampled genotypes of the same space on the "
        "synthetic scenes with the same budget and seeds, and print their val mIoU side by side.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--genotype", metavar="FILE", help="the searched genotype as a JSON file "
                        "(default: run `nasplat search` with its defaults first)")
    source.add_argument("--from-run", metavar="RUN_ID", help="take the genotype of this MLflow search run "
                        "(parent or trial run) in --tracking-uri")
    parser.add_argument("--tracking-uri", help="MLflow store for --from-run (default sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--workdir", help="where the default search writes its MLflow store and runs "
                        "(default: a new temporary folder, kept)")
    parser.add_argument("--search-epochs", type=_at_least(1), help="epochs of that search (default: the search default, "
                        "10; fewer only for a smoke run)")
    parser.add_argument("--random", type=_at_least(0), default=5, metavar="N",
                        help="genotypes sampled uniformly from the space, with seeds 0..N-1 (default 5)")
    parser.add_argument("--seeds", type=_at_least(1), default=2, metavar="S", help="retrain seeds 0..S-1 (default 2)")
    defaults = RetrainConfig()
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help=f"retrain epochs (default {defaults.epochs})")
    parser.add_argument("--image-size", type=int, default=defaults.image_size,
                        help=f"synthetic image side (default {defaults.image_size})")
    parser.add_argument("--train-samples", type=int, default=defaults.train_samples,
                        help=f"synthetic training samples (default {defaults.train_samples})")
    parser.add_argument("--val-samples", type=int, default=defaults.val_samples,
                        help=f"synthetic validation samples (default {defaults.val_samples})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"batch size (default {defaults.batch_size})")
    parser.add_argument("--device", default="cpu", help="torch device of the retrains (default cpu)")
    args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ConfigError, GenotypeError, subprocess.CalledProcessError) as err:
        print(f"search_vs_random: error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Get the searched genotype, sample the random ones, retrain all, print the table and the rank."""
    started = time.perf_counter()
    searched = searched_genotype(args)
    space = get_space(searched.space)
    candidates = [("searched", searched)] + [(f"random {k}", space.sample(k)) for k in range(args.random)]
    _log(f"{len(candidates)} genotypes x {args.seeds} seed(s), {args.epochs} epoch(s) each, "
         f"{args.train_samples} training samples at {args.image_size}px, torch threads {torch.get_num_threads()}")
    results = [retrain(label, genotype, args) for label, genotype in candidates]
    duplicates = [r.label for r in results[1:] if r.genotype == searched]
    options = GENOTYPE_DEFAULT_OPTIONS.get(searched.space, {})
    seeds = f"seeds 0-{args.seeds - 1}" if args.seeds > 1 else "seed 0"
    print(f"Retrain budget: {args.epochs} epoch{'s' if args.epochs > 1 else ''}, {args.train_samples} training / {args.val_samples} validation "
          f"synthetic samples at {args.image_size}px, batch {args.batch_size}, {seeds}; "
          f"network options {options}.")
    print()
    print(format_table(results))
    print()
    print(verdict(results[0], results[1:]))
    if duplicates:
        print(f"Note: {', '.join(duplicates)} drew the searched genotype itself.")
    _log(f"wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
