"""Top-k genotypes (--top-k, retrain --rank): k_best, top_cells and top_paths against brute-force enumeration on tiny
alpha/beta, the spaces' top_genotypes, the trial's record, and the --rank lookup in an MLflow store."""
from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch
from mlflow.tracking import MlflowClient

import nasplat
from nasplat.retraining.config import RetrainConfig
from nasplat.runtime.retrain_driver import prepare_retrain, resolve_source
from nasplat.searching.topk import k_best, top_cells, top_k_record
from nasplat.spaces.cells import cell_edges, decode_cell
from nasplat.tracking.runs import ensure_experiment
from nasplat.training.config import ConfigError
from search_spaces.autodeeplab.paths import NUM_LEVELS, STRIDES, normalized_beta, top_paths, viterbi_path

OPS = ("none", "skip", "conv", "pool")


def test_k_best_returns_the_k_highest_sums_in_order():
    rng = random.Random(4)
    groups = [sorted(((rng.random(), f"g{g}i{i}") for i in range(size)), reverse=True)
              for g, size in enumerate((3, 1, 4, 2))]
    brute = sorted((sum(s for s, _ in pick), tuple(i for _, i in pick)) for pick in itertools.product(*groups))[::-1]
    found = k_best(groups, 7)
    assert [items for _, items in found] == [items for _, items in brute[:7]]
    assert [score for score, _ in found] == pytest.approx([score for score, _ in brute[:7]])
    assert len(k_best(groups, 100)) == len(brute) == 24  # never more than exist, never a repeat
    assert k_best(groups, 0) == [] and k_best([[], groups[0]], 3) == []


def _all_cells(alpha: torch.Tensor, num_nodes: int) -> list[tuple[float, tuple]]:
    """Every cell the DARTS rule can give (2 distinct inputs per node, an op other than 'none' each), by strength;
    a cell is compared as one frozenset of (op, source) per node."""
    logp = torch.log_softmax(alpha.double(), dim=-1)
    rows = {}
    for row, (node, source) in enumerate(cell_edges(num_nodes)):
        rows[(node, source)] = row
    per_node = []
    for node in range(num_nodes):
        options = []
        for sources in itertools.combinations(range(2 + node), 2):
            for ops in itertools.product(range(1, len(OPS)), repeat=2):
                score = sum(float(logp[rows[(node, s)], o]) for s, o in zip(sources, ops))
                options.append((score, frozenset((OPS[o], s) for s, o in zip(sources, ops))))
        per_node.append(options)
    cells = [(sum(s for s, _ in pick), tuple(c for _, c in pick)) for pick in itertools.product(*per_node)]
    return sorted(cells, key=lambda c: -c[0])


def _as_sets(cell: list) -> tuple:
    return tuple(frozenset(cell[2 * n:2 * n + 2]) for n in range(len(cell) // 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_cells_match_brute_force_and_rank_1_is_the_decoded_cell(seed):
    num_nodes = 3  # 9 edges
    alpha = torch.randn(len(cell_edges(num_nodes)), len(OPS), generator=torch.Generator().manual_seed(seed))
    found = top_cells(alpha, OPS, num_nodes, k=6)
    brute = _all_cells(alpha, num_nodes)[:6]
    assert [_as_sets(cell) for _, cell in found] == [cells for _, cells in brute]
    assert [score for score, _ in found] == pytest.approx([score for score, _ in brute])
    assert found[0][1] == [tuple(pair) for pair in decode_cell(alpha, OPS, num_nodes)]
    assert len({_as_sets(cell) for _, cell in found}) == 6


@pytest.mark.parametrize("seed", [0, 1])
def test_top_cells_within_an_op_limit_match_brute_force(seed):
    """Only cells with at most 1 edge of OPS[1] (skip-like), the strongest first; the skip bias makes the unlimited
    best cells break the limit."""
    num_nodes = 3
    alpha = torch.randn(len(cell_edges(num_nodes)), len(OPS), generator=torch.Generator().manual_seed(seed))
    alpha[:, 1] += 1.5

    def count(cells: tuple) -> int:
        return sum(op == OPS[1] for node in cells for op, _ in node)
    assert count(_all_cells(alpha, num_nodes)[0][1]) > 1
    brute = [c for c in _all_cells(alpha, num_nodes) if count(c[1]) <= 1][:5]
    found = top_cells(alpha, OPS, num_nodes, k=5, limits={OPS[1]: 1})
    assert [_as_sets(cell) for _, cell in found] == [cells for _, cells in brute]
    assert [score for score, _ in found] == pytest.approx([score for score, _ in brute])


def _all_paths(beta: torch.Tensor) -> list[tuple[float, list[int]]]:
    weights = normalized_beta(beta.double(), "paper")
    paths = []
    for levels in itertools.product(range(NUM_LEVELS), repeat=beta.shape[0]):
        score, source = 0.0, 0
        for layer, target in enumerate(levels):
            weight = float(weights[layer, source, target - source + 1]) if abs(target - source) <= 1 else 0.0
            if weight <= 0.0:
                break
            score += math.log(weight)
            source = target
        else:
            paths.append((score, [STRIDES[t] for t in levels]))
    return sorted(paths, key=lambda p: -p[0])


@pytest.mark.parametrize("seed", [0, 3])
def test_top_paths_match_brute_force_and_rank_1_is_viterbi(seed):
    beta = torch.randn(5, NUM_LEVELS, 3, generator=torch.Generator().manual_seed(seed))
    found = top_paths(beta, 8)
    brute = _all_paths(beta)[:8]
    assert [path for _, path in found] == [path for _, path in brute]
    assert [score for score, _ in found] == pytest.approx([score for score, _ in brute])
    assert found[0][1] == viterbi_path(beta)


@pytest.mark.parametrize("space_name, options", [("darts", {"C": 2, "layers": 2, "reductions": 1}),
                                                 ("autodeeplab", {"F": 2, "L": 4, "B": 2})])
def test_space_top_genotypes_are_distinct_descending_and_start_with_decode(space_name, options):
    space = nasplat.get_space(space_name)
    supernet = space.supernet(3, **options)
    torch.manual_seed(5)
    arch = {name: torch.randn_like(value) for name, value in supernet.arch_parameters().items()}
    ranked = space.top_genotypes(arch, 5, **supernet.decode_options())
    strengths = [strength for strength, _ in ranked]
    assert len(ranked) == 5 and len({genotype for _, genotype in ranked}) == 5
    assert strengths == sorted(strengths, reverse=True)
    assert ranked[0][1] == space.decode(arch, **supernet.decode_options())


def test_top_k_record_puts_the_chosen_genotype_first_without_repeats():
    space = nasplat.get_space("darts")
    torch.manual_seed(0)
    arch = {"normal": torch.randn(14, 8), "reduce": torch.randn(14, 8)}
    ranked = space.top_genotypes(arch, 4)
    record = top_k_record(space, arch, {}, 3, ranked[0][1], cost_of=lambda g: float(len(g.short_hash())))
    assert [e["genotype_hash"] for e in record["genotypes"]] == [g.short_hash() for _, g in ranked[:3]]
    assert [e["rank"] for e in record["genotypes"]] == [1, 2, 3] and record["genotypes"][0]["cost"] == 12.0
    # an early stop chose a genotype of an earlier epoch: it leads, the ranked ones follow, none twice
    earlier = ranked[2][1]
    record = top_k_record(space, arch, {}, 3, earlier)
    assert [e["genotype_hash"] for e in record["genotypes"]] == [g.short_hash() for g in
                                                                 (earlier, ranked[0][1], ranked[1][1])]
    assert record["genotypes"][0]["strength"] == pytest.approx(ranked[2][0])


def test_a_space_without_its_own_strength_writes_null_in_strict_json():
    from pathlib import Path

    space = nasplat.get_space(f"{Path(__file__).resolve().parents[1] / 'examples' / 'custom_space.py'}:chain")
    arch = {name: t.detach() for name, t in space.supernet(num_classes=3).arch_parameters().items()}
    record = top_k_record(space, arch, {}, 3, space.decode(arch))
    assert [e["strength"] for e in record["genotypes"]] == [None]  # the default top_genotypes: the decode alone
    json.dumps(record, allow_nan=False)


def test_a_trial_records_its_top_k_every_epoch_and_the_measured_cost_at_the_end():
    from nasplat.runtime.search_worker import _record_candidates
    from nasplat.searching.config import SearchConfig
    from nasplat.searching.loop import SupernetSearch

    class Recorder:
        def __init__(self) -> None:
            self.json, self.metrics = {}, {}

        def log_json(self, data, artifact_file: str) -> None:
            self.json[artifact_file] = json.loads(json.dumps(data))

        def log_metrics(self, metrics, step: int) -> None:
            self.metrics.update(metrics)

    search = SupernetSearch(SearchConfig(image_size=16, train_samples=4, val_samples=2, batch_size=2, workers=1,
                                         epochs=1, space_options={"C": 2, "layers": 2, "reductions": 1},
                                         cost="params", top_k=4))
    search.train_epoch()
    logger = Recorder()
    _record_candidates(logger, search, search.genotype(), step=1, measure=False)  # an epoch before the last
    assert "top_k_genotypes.json" in logger.json and not logger.metrics
    _record_candidates(logger, search, search.genotype(), step=1, measure=True)
    entries = logger.json["top_k_genotypes.json"]["genotypes"]
    assert len(entries) == 4 and entries[0]["genotype"] == search.genotype().to_dict()
    assert entries[0]["cost"] == search.cost_metrics(search.genotype())["genotype_cost"]
    network = nasplat.get_space("darts").build(search.genotype(), search.data.num_classes,
                                               **search.cost.model.build_options)
    assert logger.metrics["genotype_params"] == sum(p.numel() for p in network.parameters())
    assert logger.metrics["genotype_latency_ms"] > 0 and logger.metrics["genotype_gflops"] > 0


def test_retrain_rank_takes_the_nth_logged_genotype(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = ensure_experiment(client, "nasplat-search", uri)
    parent = client.create_run(experiment, tags={"nasplat.kind": "search"}).info.run_id
    trial = client.create_run(experiment, tags={"nasplat.kind": "search-trial", "mlflow.parentRunId": parent}).info.run_id
    space = nasplat.get_space("darts")
    torch.manual_seed(1)
    arch = {"normal": torch.randn(14, 8), "reduce": torch.randn(14, 8)}
    ranked = [genotype for _, genotype in space.top_genotypes(arch, 3)]
    for run_id in (parent, trial):
        client.log_text(run_id, ranked[0].to_json(), "genotype.json")
    client.log_text(trial, json.dumps(top_k_record(space, arch, {}, 3, ranked[0])), "top_k_genotypes.json")
    client.set_tag(parent, "nasplat.best_trial_run", trial)
    base = prepare_retrain(RetrainConfig(tracking_uri=uri, storage=str(tmp_path / "runs")))

    for run_id in (parent, trial):
        for rank in (1, 2, 3):
            source = resolve_source(base.replace(from_run=run_id, rank=rank))
            assert source.source["genotype"] == ranked[rank - 1].to_dict()
            assert source.lineage["nasplat.source_trial_run"] == trial
            assert source.lineage.get("nasplat.source_rank") == (str(rank) if rank > 1 else None)
    with pytest.raises(ConfigError, match=r"--rank 4\): search trial run \w+ logged 3 genotype\(s\).*--rank 1\.\.3"):
        resolve_source(base.replace(from_run=parent, rank=4))
    other = client.create_run(experiment, tags={"nasplat.kind": "search-trial"}).info.run_id
    client.log_text(other, ranked[0].to_json(), "genotype.json")
    with pytest.raises(ConfigError, match=r"--rank 2\).*has no top_k_genotypes.json"):
        resolve_source(base.replace(from_run=other, rank=2))
    with pytest.raises(ConfigError, match=r"'rank' \(--rank 2\).*not a genotype file or a baseline"):
        base.replace(baseline="icnet", rank=2)
    with pytest.raises(ConfigError, match=r"'rank'"):
        base.replace(from_run=parent, rank=0)
