"""The k strongest distinct architectures, for spaces whose strength is a sum over independent choices.

A genotype's strength is the log of the product of the probabilities of its choices (each chosen edge's op under
the row softmax; in Auto-DeepLab also each move of the path under the normalised beta). The DARTS decode rule and
Viterbi both maximise it, so rank 1 is the decoded genotype; the next ranks are the next best products.
"""
from __future__ import annotations

import heapq
import itertools
import math
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch

from nasplat.spaces.cells import OpChoice, edge_probabilities
from nasplat.spaces.genotype import Genotype
from nasplat.spaces.space import SearchSpace

T = TypeVar("T")
Scored = tuple[float, T]


def k_best(groups: Sequence[Sequence[Scored]], k: int) -> list[tuple[float, tuple]]:
    """The ``k`` highest totals of picking one entry per group: ``(total score, (item of group 0, ...))``.

    Each group is a list of ``(score, item)`` sorted by score, highest first. Best-first search over index vectors
    (each popped vector pushes its successors: one index up in one group); ties keep the lower indices first.
    """
    if k < 1 or any(not group for group in groups):
        return []
    start = (0,) * len(groups)

    def total(index: tuple[int, ...]) -> float:
        return sum(group[i][0] for group, i in zip(groups, index))

    heap = [(-total(start), start)]
    seen = {start}
    found: list[tuple[float, tuple]] = []
    while heap and len(found) < k:
        negative, index = heapq.heappop(heap)
        found.append((-negative, tuple(group[i][1] for group, i in zip(groups, index))))
        for g in range(len(groups)):
            if index[g] + 1 < len(groups[g]):
                successor = index[:g] + (index[g] + 1,) + index[g + 1:]
                if successor not in seen:
                    seen.add(successor)
                    heapq.heappush(heap, (-total(successor), successor))
    return found


def top_cells(alpha: torch.Tensor, ops: Sequence[str], num_nodes: int, k: int, num_inputs: int = 2, keep: int = 2,
              excluded: Sequence[str] = ("none",), limits: Mapping[str, int | None] | None = None,
              edge_weights: torch.Tensor | None = None) -> list[tuple[float, list[OpChoice]]]:
    """The ``k`` strongest distinct cells of ``alpha`` under the DARTS notation of :func:`nasplat.decode_cell`.

    Strength: the sum over the kept edges of the log softmax probability (over all ops, as the decode) of the chosen
    op. Each node keeps ``keep`` distinct inputs, each with an op not in ``excluded``; within a node the pairs are
    listed strongest first (ties: lower source), as the decode lists them. ``limits`` (op name -> n, None for no
    limit): only cells with at most n edges of that op (the strongest such cells, exactly; the capped decode is
    greedy and may rank lower). ``edge_weights``: as in the decode, each edge's probabilities times its weight.
    """
    limits = {name: most for name, most in (limits or {}).items() if most is not None}
    logp = torch.log(edge_probabilities(alpha, len(ops), num_nodes, num_inputs, edge_weights)).tolist()
    allowed = [o for o, name in enumerate(ops) if name not in excluded]
    groups: list[list[Scored]] = []
    row = 0
    for node in range(num_nodes):
        fan_in = num_inputs + node
        candidates = []
        for sources in itertools.combinations(range(fan_in), keep):
            for chosen in itertools.product(allowed, repeat=keep):
                picks = sorted(zip(sources, chosen), key=lambda p: (-logp[row + p[0]][p[1]], p[0]))
                score = sum(logp[row + s][o] for s, o in picks)
                candidates.append((score, tuple((ops[o], s) for s, o in picks)))
        ranked = sorted(candidates, key=lambda c: -c[0])
        groups.append(ranked if limits else ranked[:k])
        row += fan_in
    best = _k_best_within(groups, limits, k) if limits else k_best(groups, k)
    return [(score, [pair for node in nodes for pair in node]) for score, nodes in best]


def _k_best_within(groups: Sequence[Sequence[Scored]], limits: Mapping[str, int], k: int) -> list[tuple[float, tuple]]:
    """The ``k`` highest totals of one entry per group (entries: (score, ((op, source), ...))) whose count of each
    op in ``limits`` stays within it: group after group, the ``k`` best partial picks per count vector."""
    names = list(limits)
    partial: dict[tuple[int, ...], list[tuple[float, tuple]]] = {(0,) * len(names): [(0.0, ())]}
    for group in groups:
        grown: dict[tuple[int, ...], list[tuple[float, tuple]]] = {}
        for counts, picks in partial.items():
            for score, item in group:
                new = tuple(c + sum(op == name for op, _ in item) for c, name in zip(counts, names))
                if all(c <= limits[name] for c, name in zip(new, names)):
                    grown.setdefault(new, []).extend((total + score, chosen + (item,)) for total, chosen in picks)
        partial = {counts: heapq.nlargest(k, entries, key=lambda e: e[0]) for counts, entries in grown.items()}
    return heapq.nlargest(k, [e for entries in partial.values() for e in entries], key=lambda e: e[0])


STRENGTH = ("log of the product of the probabilities of the genotype's choices (each kept edge's op under the row "
            "softmax; Auto-DeepLab adds the path's normalised move weights); the decode maximises it")
"""What the ``strength`` of a ranked genotype means, written into the top-k record."""


def top_k_record(space: SearchSpace, arch: Mapping[str, torch.Tensor], decode_options: Mapping[str, Any], k: int,
                 chosen: Genotype, cost_of: Callable[[Genotype], float] | None = None) -> dict[str, Any]:
    """The JSON record of a trial's ``k`` strongest distinct genotypes: ``chosen`` (the trial's result) first,
    then :meth:`SearchSpace.top_genotypes` in order, without repeats; with ``cost_of``, each one's cost. A strength
    the space does not define is null (strict JSON has no NaN)."""
    ranked = space.top_genotypes(arch, k + 1, **decode_options)
    strengths = {genotype: strength for strength, genotype in ranked}
    ordered = [chosen] + [genotype for _, genotype in ranked if genotype != chosen]
    entries = []
    for rank, genotype in enumerate(ordered[:k], start=1):
        strength = strengths.get(genotype, math.nan)  # NaN: a space without its own strength (or an unranked one)
        entry = {"rank": rank, "strength": None if math.isnan(strength) else strength,
                 "genotype_hash": genotype.short_hash(),
                 "genotype": genotype.to_dict()}
        if cost_of is not None:
            entry["cost"] = cost_of(genotype)
        entries.append(entry)
    return {"space": space.name, "strength": STRENGTH, "genotypes": entries}
