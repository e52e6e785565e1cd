"""Is the search worth it? Searched genotypes against random genotypes of the same space and the baselines.

Retrains on the synthetic scenes, each with the retrain seeds 0..S-1 (``--seeds S``) and one budget:

- the genotypes of ``nasplat search`` run with its defaults and ``--seed K`` for each ``--search-seeds K``
  (about 5 minutes each on 2 CPU cores), or the files given with ``--genotype FILE ...``;
- ``--random N`` genotypes from ``nasplat sample-genotype --seed k`` for k = 0..N-1 (uniform over the genotypes
  the search decodes, its skip cap included);
- the hand-designed ``--baselines`` (``nasplat baselines --models`` names; default DUC+HDC, DeepLabV3+ ResNet-101
  and ICNet), from scratch like the others.

Every retrain runs :class:`nasplat.retraining.loop.Retrainer` with a ``RetrainConfig`` that differs from ``nasplat
retrain``'s defaults only in ``workers=1`` and the budget flags below, one process per retrain without Ray or
MLflow, ``--jobs`` at a time (each with cores/jobs torch threads). The seed fixes the data, the initialisation and
the sample order, so every network sees the same images. Each finished retrain (its whole validation curve) is
appended to ``<workdir>/retrains.jsonl``; a rerun with the same ``--workdir`` and budget skips what is there.

Prints (stdout; progress goes to stderr) the budget, a markdown table (val mIoU after the last epoch: mean, min-max,
per seed; mean best-epoch mIoU; parameters; the rise of the last quarter of the learning curve) and the verdict:
each searched genotype's rank among the random ones and a one-sided Mann-Whitney U test of "searched genotypes
reach a higher mean mIoU than random ones" (scipy, exact p).

    python bench/search_vs_random.py --workdir DIR [--search-seeds 0 1 2 | --genotype FILE ...] [--random 10]
        [--baselines duc_hdc deeplabv3plus_resnet101 icnet] [--seeds 2] [--epochs 16] [--train-samples 512]
        [--image-size 48] [--jobs 2]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nasplat.retraining.config import GENOTYPE_DEFAULT_OPTIONS, RetrainConfig  # noqa: E402
from nasplat.spaces.genotype import Genotype, GenotypeError  # noqa: E402
from nasplat.spaces.registry import get_space, load_genotype  # noqa: E402
from nasplat.training.config import ConfigError  # noqa: E402
from pipelines.baselines import MODELS  # noqa: E402

from bench.worker_lifetime import die_with_parent  # noqa: E402

BASELINES = ("duc_hdc", "deeplabv3plus_resnet101", "icnet")
"""The three hand-designed networks of the product brief (``nasplat baselines --models`` names)."""
FLAT_TOLERANCE = 0.01
"""A learning curve's last quarter is flat when its least-squares line rises by at most this much val mIoU (or by at
most twice the residual spread around that line, when the epochs are noisier than that)."""


@dataclass(frozen=True)
class Candidate:
    """One network under test: its row label, its kind (searched, random, baseline) and its retrain source."""

    label: str
    kind: str
    source: dict
    ident: str  # genotype hash or baseline name with options: what the cache is keyed on


@dataclass
class Result:
    """A candidate's retrains, one per seed: val mIoU curves (one value per epoch) and parameter count."""

    candidate: Candidate
    params: int
    curves: list[list[float]]

    @property
    def last(self) -> list[float]:
        return [curve[-1] for curve in self.curves]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.last)

    @property
    def best_mean(self) -> float:
        return statistics.fmean(max(curve) for curve in self.curves)


def _log(message: str) -> None:
    print(f"[bench] {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def last_quarter_rise(curve: list[float]) -> tuple[float, bool]:
    """Rise of the least-squares line through the last quarter of the epochs (at least 3), and whether it is flat."""
    tail = curve[-max(3, len(curve) // 4):]
    xs = range(len(tail))
    x_mean, y_mean = statistics.fmean(xs), statistics.fmean(tail)
    slope = (sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, tail))
             / sum((x - x_mean) ** 2 for x in xs))
    residuals = [y - (y_mean + slope * (x - x_mean)) for x, y in zip(xs, tail)]
    rise = slope * (len(tail) - 1)
    return rise, rise <= max(FLAT_TOLERANCE, 2 * statistics.pstdev(residuals))


def run_search(workdir: Path, seed: int, epochs: int | None) -> Genotype:
    """``nasplat search --seed SEED`` with its defaults (files under ``workdir``), unless it already ran there."""
    name = f"bench-search-seed{seed}"
    path = workdir / "nasplat_runs" / name / "genotype.json"
    if not path.exists():
        command = [sys.executable, "-m", "pipelines.cli", "search", "--name", name, "--seed", str(seed),
                   "--storage", str(workdir / "nasplat_runs"), "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}"]
        if epochs is not None:
            command += ["--epochs", str(epochs)]
        _log(f"running `nasplat {' '.join(command[3:])}`")
        subprocess.run(command, cwd=REPO, check=True, stdout=sys.stderr)  # stdout carries only the table
    _log(f"search seed {seed}: {path}")
    return load_genotype(path)


def candidates(args: argparse.Namespace, workdir: Path) -> list[Candidate]:
    """The searched genotypes, then the random ones, then the baselines."""
    if args.genotype:
        searched = [load_genotype(Path(p).expanduser().resolve()) for p in args.genotype]
        labels = [f"searched ({Path(p).name})" for p in args.genotype]
    else:
        searched = [run_search(workdir, seed, args.search_epochs) for seed in args.search_seeds]
        labels = [f"searched, search seed {seed}" for seed in args.search_seeds]
    rows = [Candidate(label, "searched", {"genotype": g.to_dict()}, g.short_hash()) for label, g in zip(labels, searched)]
    space = get_space(searched[0].space)
    for k in range(args.random):
        genotype = space.sample(k, **space.search_defaults)  # what `nasplat sample-genotype --seed k` prints
        rows.append(Candidate(f"random {k}", "random", {"genotype": genotype.to_dict()}, genotype.short_hash()))
    for name in args.baselines:
        fields = MODELS[name]
        rows.append(Candidate(name, "baseline", {"baseline": fields["baseline"], "options": fields["model_options"]},
                              f"{name}{json.dumps(fields['model_options'], sort_keys=True)}"))
    return rows


def budget(args: argparse.Namespace) -> dict:
    """The RetrainConfig fields every retrain shares (the cache is valid only for the same budget)."""
    return {"epochs": args.epochs, "image_size": args.image_size, "train_samples": args.train_samples,
            "val_samples": args.val_samples, "batch_size": args.batch_size, "workers": 1}


def retrain_curve(source: dict, seed: int, fields: dict, threads: int, device: str) -> dict:
    """One retrain (run in a worker process): val mIoU after every epoch, parameter count, wall time."""
    import torch

    from nasplat.retraining.loop import Retrainer
    from nasplat.training.model_stats import count_parameters

    torch.set_num_threads(threads)
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the retrain's progress lines: stdout carries only the table
        trainer = Retrainer(RetrainConfig(seed=seed, **fields), source, device=device)
        curve = []
        for _ in range(fields["epochs"]):
            trainer.train_epoch()
            curve.append(float(trainer.evaluate()["val_miou"]))
    return {"curve": curve, "params": count_parameters(trainer.model), "seconds": time.perf_counter() - started}


class Cache:
    """Finished retrains in ``retrains.jsonl``: one JSON line each, keyed by candidate, seed and budget."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[tuple, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                self.done[self.key(record["ident"], record["seed"], record["budget"])] = record

    @staticmethod
    def key(ident: str, seed: int, fields: dict) -> tuple:
        return ident, seed, json.dumps(fields, sort_keys=True)

    def add(self, record: dict) -> None:
        self.done[self.key(record["ident"], record["seed"], record["budget"])] = record
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")


def retrain_all(rows: list[Candidate], args: argparse.Namespace, cache: Cache) -> list[Result]:
    """Every candidate x seed not yet in the cache, ``--jobs`` at a time (baselines first: they take longest)."""
    fields = budget(args)
    todo = [(row, seed) for row in rows for seed in range(args.seeds)
            if cache.key(row.ident, seed, fields) not in cache.done]
    todo.sort(key=lambda item: item[0].kind != "baseline")
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    _log(f"{len(rows)} networks x {args.seeds} seed(s): {len(todo)} retrains to run ({args.jobs} at a time, "
         f"{threads} torch thread(s) each), {len(rows) * args.seeds - len(todo)} already in {cache.path}")
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context,
                                                initializer=die_with_parent) as pool:
        futures = {pool.submit(retrain_curve, row.source, seed, fields, threads, args.device): (row, seed)
                   for row, seed in todo}
        for count, future in enumerate(concurrent.futures.as_completed(futures), 1):
            row, seed = futures[future]
            result = future.result()
            cache.add({"ident": row.ident, "label": row.label, "seed": seed, "budget": fields, **result})
            _log(f"[{count}/{len(todo)}] {row.label} seed {seed}: val mIoU last {result['curve'][-1]:.4f}, "
                 f"best {max(result['curve']):.4f}, {result['seconds']:.0f} s")
    results = []
    for row in rows:
        records = [cache.done[cache.key(row.ident, seed, fields)] for seed in range(args.seeds)]
        results.append(Result(row, records[0]["params"], [r["curve"] for r in records]))
    return results


def format_table(results: list[Result]) -> str:
    """One row per network: last-epoch val mIoU (mean, min-max, per seed), best-epoch mean, params, last-quarter rise."""
    lines = ["| network | hash | params | mIoU mean | min-max | per seed | best-epoch mean | last-quarter rise |",
             "|---|---|---:|---:|---|---|---:|---|"]
    for r in results:
        rises = [last_quarter_rise(curve) for curve in r.curves]
        rise_text = ", ".join(f"{rise:+.3f}{'' if flat else ' (rising)'}" for rise, flat in rises)
        ident = f"`{r.candidate.ident}`" if r.candidate.kind != "baseline" else "-"
        lines.append(f"| {r.candidate.label} | {ident} | {r.params:,} | {r.mean:.3f} | {min(r.last):.3f}-"
                     f"{max(r.last):.3f} | {', '.join(f'{v:.3f}' for v in r.last)} | {r.best_mean:.3f} | {rise_text} |")
    return "\n".join(lines)


def verdict(results: list[Result]) -> list[str]:
    """Ranks, the Mann-Whitney U test, the baselines' place and how many curves ended flat."""
    from scipy.stats import mannwhitneyu

    by_kind = {kind: [r for r in results if r.candidate.kind == kind] for kind in ("searched", "random", "baseline")}
    searched, randoms, baselines = by_kind["searched"], by_kind["random"], by_kind["baseline"]
    lines = []
    random_means = sorted((r.mean for r in randoms), reverse=True)
    for r in searched:
        rank, ties = 1 + sum(m > r.mean for m in random_means), sum(m == r.mean for m in random_means)
        tied = f", tied with {ties}" if ties else ""
        lines.append(f"- {r.candidate.label} (`{r.candidate.ident}`, {r.mean:.3f}) ranks {rank} of "
                     f"{len(randoms) + 1} among the random genotypes{tied}.")
    if randoms:
        lines.append(f"- Random genotypes: median {statistics.median(random_means):.3f}, best {random_means[0]:.3f}, "
                     f"worst {random_means[-1]:.3f}.")
    if len(searched) >= 1 and len(randoms) >= 1:
        test = mannwhitneyu([r.mean for r in searched], [r.mean for r in randoms], alternative="greater",
                            method="exact")
        lines.append(f"- One-sided Mann-Whitney U, searched ({len(searched)}) > random ({len(randoms)}) genotypes by "
                     f"mean val mIoU: U = {test.statistic:.1f}, p = {test.pvalue:.4f}.")
    for r in baselines:
        above = sum(s.mean > r.mean for s in searched)
        lines.append(f"- Baseline {r.candidate.label}: {r.mean:.3f}, below {above} of {len(searched)} searched "
                     f"genotypes, {r.params:,} parameters.")
    flats = [last_quarter_rise(curve)[1] for r in results for curve in r.curves]
    lines.append(f"- Learning curves flat over their last quarter (rise <= {FLAT_TOLERANCE} mIoU or within twice the "
                 f"residual spread): {sum(flats)} of {len(flats)}.")
    duplicates = [r.candidate.label for r in randoms if any(r.candidate.ident == s.candidate.ident for s in searched)]
    if duplicates:
        lines.append(f"- Note: {', '.join(duplicates)} drew a searched genotype itself.")
    return lines


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
        description="Retrain searched genotypes, uniformly sampled genotypes of the same space and the hand-designed "
        "baselines on the synthetic scenes with one budget and the same seeds; print val mIoU side by side, ranks "
        "and a Mann-Whitney U test.")
    parser.add_argument("--workdir", required=True, help="searches, MLflow store and retrains.jsonl go here; a rerun "
                        "with the same folder skips what finished")
    parser.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1, 2], metavar="K",
                        help="run `nasplat search --seed K` with its defaults for each K (default: 0 1 2)")
    parser.add_argument("--genotype", nargs="+", metavar="FILE", help="searched genotype JSON files to use instead "
                        "of running searches")
    parser.add_argument("--search-epochs", type=_at_least(1), help="epochs of those searches (default: the search "
                        "default; fewer only for a smoke run)")
    parser.add_argument("--random", type=_at_least(0), default=10, metavar="N",
                        help="random genotypes, `nasplat sample-genotype --seed k` for k = 0..N-1 (default 10)")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=[m for m in MODELS if m != "searched"],
                        metavar="MODEL", help=f"baselines to retrain (default: {' '.join(BASELINES)}; none: no "
                        "baselines)")
    parser.add_argument("--seeds", type=_at_least(1), default=2, metavar="S", help="retrain seeds 0..S-1 (default 2)")
    parser.add_argument("--epochs", type=_at_least(4), default=16, help="retrain epochs (default 16)")
    parser.add_argument("--image-size", type=_at_least(32), default=48, help="synthetic image side (default 48)")
    parser.add_argument("--train-samples", type=_at_least(8), default=512, help="training samples (default 512)")
    parser.add_argument("--val-samples", type=_at_least(8), default=64, help="validation samples (default 64)")
    parser.add_argument("--batch-size", type=_at_least(1), default=RetrainConfig.batch_size,
                        help=f"batch size (default {RetrainConfig.batch_size})")
    parser.add_argument("--jobs", type=_at_least(1), default=min(2, os.cpu_count() or 1),
                        help="retrains at once, each in its own process (default: 2, or 1 on one core)")
    parser.add_argument("--device", default="cpu", help="torch device of the retrains (default cpu)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ConfigError, GenotypeError, subprocess.CalledProcessError) as err:
        print(f"search_vs_random: error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Searches (or files), random genotypes and baselines; retrain all; print budget, table and verdict."""
    started = time.perf_counter()
    workdir = Path(args.workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    rows = candidates(args, workdir)
    results = retrain_all(rows, args, Cache(workdir / "retrains.jsonl"))
    seeds = f"seeds 0-{args.seeds - 1}" if args.seeds > 1 else "seed 0"
    options = GENOTYPE_DEFAULT_OPTIONS.get(rows[0].source["genotype"]["space"], {})
    print(f"Retrain budget: {args.epochs} epochs, {args.train_samples} training / {args.val_samples} validation "
          f"synthetic samples at {args.image_size}px, batch {args.batch_size}, {seeds}; genotype network options "
          f"{options}; baselines from scratch.")
    print()
    print(format_table(results))
    print()
    print("\n".join(verdict(results)))
    _log(f"wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
