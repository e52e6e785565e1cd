"""Sequential greedy decisions (SGAS, Li et al. CVPR 2020, arXiv 1912.00195): the search decides its cells edge by
edge and keeps each decision.

After a share of the search (``sgas_start``), at the end of an epoch, each cell decides the undecided edge that
scores highest on SGAS's criterion 1: ``normalize(importance) * normalize(certainty)``, where an edge's importance
is the probability mass of its ops other than ``none``, its certainty is one minus the entropy of those ops'
renormalised probabilities over ``ln(ops - 1)``, and ``normalize`` maps the values linearly onto [0, 1] by their
minimum and range (the authors' code does so over every edge of the cell; here over the undecided ones, as decided
rows are fixed one-hot and would set the maximum). The edge
takes its strongest op (not ``none``, and not one whose ``limits`` are reached, e.g. the skip cap). Once a node
holds ``keep`` decided edges, its other edges are pruned. A decided edge's row is fixed to its op and a pruned
edge's row to ``none`` (one-hot logits, restored after every architecture step), so the supernet runs the decided
ops, the architecture optimiser no longer moves them and the decode reads them back.

SGAS decides one edge every 5 epochs after 9 warm-up epochs and trains the decided network 5 epochs more (50 in
all, DARTS space). Here the decisions are spread evenly over the epochs from ``sgas_start`` to the last
``sgas_post`` share of the search (with 10 epochs and the defaults 0.2 / 0.1: one edge per cell at the end of each
of epochs 2..9, the same pace), so every cell is decided before the last epoch.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import torch

from nasplat.spaces.cells import cell_edges
from nasplat.spaces.space import DecisionCell

FIXED_LOGIT = 30.0
"""A decided row's logits are 0 for its op and -30 for the rest: the other ops keep ``exp(-30) ~ 1e-13`` of it."""


def decision_epochs(epochs: int, start: float, post: float, warmup_epochs: int = 0) -> list[int]:
    """The 1-based epochs at whose end decisions are made: from ``round(start * epochs)`` (at least 1, and after the
    warm-up) to ``epochs - max(1, round(post * epochs))``; empty if that range is empty."""
    first = max(1, round(start * epochs), warmup_epochs + 1)
    last = epochs - max(1, round(post * epochs))
    return list(range(first, last + 1))


def edge_scores(alpha: torch.Tensor, none_index: int, candidates: list[int]) -> torch.Tensor:
    """SGAS criterion 1 of each candidate row of ``alpha`` (``[edges, ops]`` logits), in ``candidates`` order."""
    probs = torch.softmax(alpha.detach().double()[candidates], dim=-1)
    others = torch.cat([probs[:, :none_index], probs[:, none_index + 1:]], dim=1)
    importance = others.sum(dim=1)
    renormalised = others / importance[:, None]
    entropy = -(renormalised * renormalised.clamp_min(1e-300).log()).sum(dim=1) / math.log(others.shape[1])
    return _min_max(importance) * _min_max(1.0 - entropy)


def _min_max(values: torch.Tensor) -> torch.Tensor:
    spread = values.max() - values.min()
    return (values - values.min()) / spread if spread > 0 else torch.zeros_like(values)


@dataclasses.dataclass
class CellDecisions:
    """The decisions of one cell: edge row -> op index (decided) and the pruned edge rows."""

    cell: DecisionCell
    decided: dict[int, int] = dataclasses.field(default_factory=dict)
    pruned: set[int] = dataclasses.field(default_factory=set)

    def __post_init__(self) -> None:
        self.edges = cell_edges(self.cell.num_nodes, self.cell.num_inputs)  # (node, source) of each row
        self._fixed: tuple[torch.Tensor, torch.Tensor] | None = None  # rows and their logits, built once per decision

    def restore(self, decided: Mapping[int, int], pruned: set[int]) -> None:
        """Set the decisions (from a checkpoint)."""
        self.decided, self.pruned, self._fixed = dict(decided), set(pruned), None

    @property
    def remaining(self) -> int:
        """How many edges are still to be decided (pruning follows by itself)."""
        kept = [min(self.cell.keep, self.cell.num_inputs + node) for node in range(self.cell.num_nodes)]
        for edge in self.decided:
            kept[self.edges[edge][0]] -= 1
        return sum(kept)

    def decide_one(self, alpha: torch.Tensor) -> tuple[int, int]:
        """Decide the best-scoring undecided edge of ``alpha``; returns ``(edge row, op index)``."""
        ops, none_index = self.cell.ops, self.cell.ops.index("none")
        candidates = [e for e in range(len(self.edges)) if e not in self.decided and e not in self.pruned]
        edge = candidates[int(torch.argmax(edge_scores(alpha, none_index, candidates)))]
        counts = {name: sum(ops[k] == name for k in self.decided.values()) for name in ops}
        allowed = [k for k, name in enumerate(ops) if k != none_index
                   and (self.cell.limits.get(name) is None or counts[name] < self.cell.limits[name])]
        row = alpha.detach()[edge]
        op = max(allowed, key=lambda k: (float(row[k]), -k))
        self.decided[edge] = op
        self._fixed = None
        node = self.edges[edge][0]
        node_edges = [e for e, (n, _) in enumerate(self.edges) if n == node]
        if sum(e in self.decided for e in node_edges) >= self.cell.keep:
            self.pruned.update(e for e in node_edges if e not in self.decided)
        return edge, op

    def impose(self, alpha: torch.Tensor) -> None:
        """Fix the decided rows of ``alpha`` to their op and the pruned ones to ``none`` (in place, no grad). Runs
        after every architecture step: the rows and their logits are built once per decision."""
        if not self.decided and not self.pruned:
            return
        if self._fixed is None or self._fixed[1].device != alpha.device or self._fixed[1].dtype != alpha.dtype:
            fixed = {**{e: self.cell.ops.index("none") for e in self.pruned}, **self.decided}
            rows = sorted(fixed)
            values = torch.full((len(rows), alpha.shape[1]), -FIXED_LOGIT, dtype=alpha.dtype, device=alpha.device)
            values[torch.arange(len(rows)), torch.tensor([fixed[e] for e in rows])] = 0.0
            self._fixed = (torch.tensor(rows, device=alpha.device), values)
        with torch.no_grad():
            alpha[self._fixed[0]] = self._fixed[1]


class SequentialDecisions:
    """SGAS for the cells a supernet declares (:meth:`nasplat.Supernet.decision_cells`)."""

    def __init__(self, cells: Mapping[str, DecisionCell], arch: Mapping[str, torch.Tensor], start: float,
                 post: float) -> None:
        for name, cell in cells.items():
            if "none" not in cell.ops:
                raise ValueError(f"SGAS prunes edges to 'none', which cell {name!r} lacks (ops {list(cell.ops)})")
        self.arch = {name: arch[name] for name in cells}
        self.cells = {name: CellDecisions(cell) for name, cell in cells.items()}
        self.start, self.post = start, post

    def end_epoch(self, epoch: int, epochs: int, warmup_epochs: int = 0) -> str | None:
        """After the 1-based ``epoch`` of ``epochs``: make its share of the decisions; a line that says them (None
        when none were due)."""
        schedule = decision_epochs(epochs, self.start, self.post, warmup_epochs)
        if epoch not in schedule:
            return None
        points_left = len(schedule) - schedule.index(epoch)
        made, totals = [], []
        for name, decisions in self.cells.items():
            for _ in range(math.ceil(decisions.remaining / points_left)):
                edge, op = decisions.decide_one(self.arch[name])
                node, source = decisions.edges[edge]
                made.append(f"{name} node {node} <- {source}: {decisions.cell.ops[op]}")
            decisions.impose(self.arch[name])
            totals.append(f"{name} {len(decisions.decided)}/{len(decisions.decided) + decisions.remaining}")
        return f"sgas decided {', '.join(made) or 'nothing'} (edges decided: {', '.join(totals)})"

    def decided_share(self) -> float:
        """The share of the edges to keep that are decided, over every cell (1.0 once the search is decided)."""
        decided = sum(len(d.decided) for d in self.cells.values())
        return decided / (decided + sum(d.remaining for d in self.cells.values()))

    def impose(self) -> None:
        """Re-fix every decided and pruned row (after an architecture step, a roll-back or a resume)."""
        for name, decisions in self.cells.items():
            decisions.impose(self.arch[name])

    def state_dict(self) -> dict[str, Any]:
        return {name: {"decided": dict(d.decided), "pruned": sorted(d.pruned)} for name, d in self.cells.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, decisions in self.cells.items():
            saved = state.get(name, {"decided": {}, "pruned": []})
            decisions.restore({int(e): int(op) for e, op in saved["decided"].items()}, {int(e) for e in saved["pruned"]})
        self.impose()
