"""Does the default search reach a decision? Collapse remedies measured on the synthetic task.

Each candidate (a set of ``nasplat search`` options over its defaults) runs the default search, per seed, as the
two Ray Train workers of ``nasplat search`` would: two processes, one thread each, joined by torch.distributed
(gloo), each running :class:`nasplat.searching.loop.SupernetSearch` (no Ray, no MLflow: a few seconds less
start-up than the CLI). After every epoch rank 0 records the mean entropy of the architecture's distributions
(all, and the op rows alone: the figure the table reports, without edge weights), the decoded genotype's hash, the ``skip_connect`` count of its normal cell (DARTS) and the supernet's val mIoU.

Printed per run and per candidate (mean over seeds): the final entropy and its ratio to ln(ops), whether the
genotype of the last two epochs is the same, the normal cell's skip connections, val mIoU and wall time; and
whether the run is *decided* (ratio <= 0.9, the same genotype over the last 2 epochs, at most 2 skip
connections). ``--json FILE`` appends each run's record (per-epoch series included) as one JSON line.

    python bench/collapse.py --candidates default entropy --seeds 0 1 [--epochs 10] [--json runs.jsonl]
    python bench/collapse.py --list
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nasplat.searching.config import SearchConfig  # noqa: E402
from nasplat.searching.loop import SupernetSearch  # noqa: E402
from nasplat.spaces.registry import get_space  # noqa: E402

from bench.worker_lifetime import die_with_parent  # noqa: E402

WORKERS = 2
CANDIDATES: dict[str, dict] = {
    "former_default": {"remedy": ["none"], "arch_lr": 3e-3},
    "none_lr3e-2": {"remedy": ["none"], "arch_lr": 3e-2},
    "sdarts_lr3e-2": {"remedy": ["sdarts"], "arch_lr": 3e-2},
    "beta_lr3e-2": {"remedy": ["beta_decay"], "arch_lr": 3e-2},
    "entropy_lr3e-2": {"remedy": ["entropy"], "arch_lr": 3e-2},
    "sdarts+entropy_lr3e-2": {"remedy": ["sdarts", "entropy"], "arch_lr": 3e-2},
    "beta+entropy_lr3e-2": {"remedy": ["beta_decay", "entropy"], "arch_lr": 3e-2},
    "sdarts_eps2+entropy_lr3e-2": {"remedy": ["sdarts", "entropy"], "arch_lr": 3e-2,
                                   "remedy_options": {"epsilon_min": 0.2, "epsilon_max": 2.0}},
    "entropy_w3_lr3e-2": {"remedy": ["entropy"], "arch_lr": 3e-2, "remedy_options": {"entropy_weight": 3.0}},
    "entropy_lr3e-2_warmup3": {"remedy": ["entropy"], "arch_lr": 3e-2, "warmup_epochs": 3},
    "sdarts+entropy_lr3e-2_warmup3": {"remedy": ["sdarts", "entropy"], "arch_lr": 3e-2, "warmup_epochs": 3},
    "darts_minus+entropy_lr3e-2": {"remedy": ["darts_minus", "entropy"], "arch_lr": 3e-2},
    "darts_minus+entropy_cap2_lr3e-2": {"remedy": ["darts_minus", "entropy"], "arch_lr": 3e-2},
    "entropy_cap2_lr3e-2": {"remedy": ["entropy"], "arch_lr": 3e-2},
    "skip_dropout0.4+entropy_cap2_lr3e-2": {"remedy": ["skip_dropout", "entropy"], "arch_lr": 3e-2,
                                            "remedy_options": {"skip_dropout_rate": 0.4}},
    "skip_dropout0.7+entropy_cap2_lr3e-2": {"remedy": ["skip_dropout", "entropy"], "arch_lr": 3e-2,
                                            "remedy_options": {"skip_dropout_rate": 0.7}},
    "darts_minus+skip_dropout+entropy_cap2_lr3e-2": {"remedy": ["darts_minus", "skip_dropout", "entropy"],
                                                     "arch_lr": 3e-2},
    "skip_dropout0.7+entropy_w2_cap2_cosine_lr3e-2": {"remedy": ["skip_dropout", "entropy"], "arch_lr": 3e-2,
                                                      "arch_lr_min": 0.0, "remedy_options": {"entropy_weight": 2.0}},
    "default": {},
    "default+edge_norm": {"remedy": ["skip_dropout", "entropy"], "space_options": {"edge_normalization": True}},
    "default+sgas": {"remedy": ["skip_dropout", "entropy", "sgas"]},
}
"""Name -> overrides of SearchConfig's defaults (``default`` = whatever ``nasplat search`` does today; the DARTS
space's ``max_skip_normal`` is 2 in the names with ``cap2`` and in ``default``, none (the paper's decode) in the
others; the entropy penalty's weight is 1 unless the name says ``w2`` or ``w3`` (2 in ``default``); the
architecture learning rate is constant (``arch_lr_min = arch_lr``) except in ``default`` and the names with
``cosine``, which anneal it to 0; ``former_default``: no remedy, arch lr 3e-3; ``default+edge_norm``: the default of
the third round (``--remedy skip_dropout entropy``) with PC-DARTS's edge normalisation, without partial channels;
``default+sgas``: that default with SGAS's edge-by-edge decisions added to its remedies, the default since the
fourth round)."""
for _name, _overrides in CANDIDATES.items():
    if not _name.startswith("default"):
        _overrides["space_options"] = {"max_skip_normal": 2 if "cap2" in _name else None}
        _overrides.setdefault("arch_lr_min", _overrides["arch_lr"])
        if "entropy" in _overrides["remedy"]:  # the penalty's weight was 1 before the second round's measurements
            _overrides["remedy_options"] = {"entropy_weight": 1.0, **_overrides.get("remedy_options", {})}


def _skip_count(genotype: dict) -> int:
    return sum(1 for op, _ in genotype.get("normal", ()) if op == "skip_connect")


def _op_entropy(search: SupernetSearch) -> float:
    """Mean entropy of the op rows alone (tensors over the space's ops; edge weights left out)."""
    rows = [d.reshape(-1, d.shape[-1]) for d in search.model.arch_distributions().values()
            if d.shape[-1] == len(search.space.ops)]
    probs = torch.cat(rows).double()
    return float(-(probs * probs.clamp_min(1e-30).log()).sum(-1).mean())


def _worker(rank: int, config: dict, port: int, out: str) -> None:
    die_with_parent()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # as a Ray Train worker on one CPU
    dist.init_process_group("gloo", rank=rank, world_size=WORKERS)
    try:
        search = SupernetSearch(SearchConfig.from_dict(config))
        epochs = []
        while search.epoch < search.config.epochs:
            train = search.train_epoch()
            evaluation = search.evaluate()
            genotype = search.genotype()
            epochs.append({"epoch": search.epoch, "arch_entropy": search.arch_entropy(),
                           "op_entropy": _op_entropy(search),
                           "hash": genotype.short_hash(), "skip_normal": _skip_count(genotype.to_dict()),
                           "skip_uncapped": _skip_count(search.space.decode(search.model.arch_parameters()).to_dict()),
                           "val_miou": float(evaluation["val_miou"]), "epoch_time_s": train["epoch_time_s"],
                           "normal": genotype.to_dict().get("normal"),
                           **{k: v for k, v in train.items() if k.startswith("remedy_")}})
            if rank == 0:
                print(f"  epoch {search.epoch}: entropy {epochs[-1]['arch_entropy']:.4f} genotype {genotype.short_hash()} "
                      f"skip {epochs[-1]['skip_normal']} (uncapped {epochs[-1]['skip_uncapped']}) "
                      f"mIoU {epochs[-1]['val_miou']:.4f} "
                      f"({train['epoch_time_s']:.0f}s)", file=sys.stderr, flush=True)
        if rank == 0:
            distributions = {k: v.tolist() for k, v in search.model.arch_distributions().items()}
            Path(out).write_text(json.dumps({"epochs": epochs, "genotype": genotype.to_dict(),
                                             "ops": len(search.space.ops), "distributions": distributions}))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(candidate: str, seed: int, epochs: int | None) -> dict:
    """One search of ``candidate`` at ``seed``; its per-epoch record and the summary figures."""
    config = SearchConfig().replace(**CANDIDATES[candidate], seed=seed, **({"epochs": epochs} if epochs else {}))
    config = config.with_space_defaults(get_space(config.space).search_defaults)  # as nasplat search does
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        started = time.perf_counter()
        mp.spawn(_worker, args=(config.to_dict(), _free_port(), out), nprocs=WORKERS)
        wall = time.perf_counter() - started
        record = json.loads(Path(out).read_text())
    last = record["epochs"][-1]
    ratio = last["op_entropy"] / math.log(record["ops"])  # the issue's criterion: the op rows' entropy
    stable = len(record["epochs"]) >= 2 and record["epochs"][-2]["hash"] == last["hash"]
    return {"candidate": candidate, "seed": seed, "entropy": last["op_entropy"], "ratio": ratio, "stable": stable,
            "skip": last["skip_normal"], "miou": last["val_miou"], "wall_s": wall,
            "decided": ratio <= 0.9 and stable and last["skip_normal"] <= 2, "hash": last["hash"],
            "config": {k: v for k, v in config.to_dict().items() if k in CANDIDATES[candidate] or k == "seed"},
            **record, "date": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg()[0]}


def table(rows: list[dict]) -> str:
    """Markdown: one line per run, then one per candidate (means over its seeds)."""
    lines = ["| candidate | seed | entropy (/ln ops) | same genotype last 2 | skip (normal) | val mIoU | wall | decided |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['candidate']} | {r['seed']} | {r['entropy']:.3f} ({r['ratio']:.2f}) | "
                     f"{'yes' if r['stable'] else 'no'} | {r['skip']} | {r['miou']:.3f} | {r['wall_s'] / 60:.1f} min | "
                     f"{'yes' if r['decided'] else 'no'} |")
    for name in dict.fromkeys(r["candidate"] for r in rows):
        runs = [r for r in rows if r["candidate"] == name]
        mean = lambda key: statistics.fmean(float(r[key]) for r in runs)  # noqa: E731
        lines.append(f"| **{name}** | mean of {len(runs)} | {mean('entropy'):.3f} ({mean('ratio'):.2f}) | "
                     f"{sum(r['stable'] for r in runs)}/{len(runs)} | {mean('skip'):.1f} | {mean('miou'):.3f} | "
                     f"{mean('wall_s') / 60:.1f} min | {sum(r['decided'] for r in runs)}/{len(runs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", nargs="+", default=["default"], choices=sorted(CANDIDATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=None, help="override the default search's epochs")
    parser.add_argument("--json", type=Path, default=None, help="append each run's record to this JSON-lines file")
    parser.add_argument("--list", action="store_true", help="print the candidates and their options, and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, overrides in CANDIDATES.items():
            print(f"{name}: {overrides or 'the defaults of nasplat search'}")
        return 0
    rows = []
    for candidate in args.candidates:  # one run at a time: the two workers take the two cores
        for seed in args.seeds:
            print(f"[collapse] {candidate} seed {seed}", file=sys.stderr, flush=True)
            rows.append(run(candidate, seed, args.epochs))
            if args.json:
                with args.json.open("a") as handle:
                    handle.write(json.dumps(rows[-1]) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
