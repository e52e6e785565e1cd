"""The ``sgas`` remedy (SGAS, arXiv 1912.00195): criterion 1 against a hand computation, pruning and the skip cap,
the decision schedule, and a search that ends with the decided cells and resumes with its decisions."""
from __future__ import annotations

import math

import pytest
import torch

import nasplat
from nasplat import DecisionCell
from nasplat.searching.config import SearchConfig
from nasplat.searching.greedy import CellDecisions, SequentialDecisions, decision_epochs, edge_scores
from nasplat.searching.loop import SupernetSearch
from nasplat.spaces.cells import cell_edges

OPS = ("none", "skip_connect", "conv")


def test_edge_scores_are_sgas_criterion_1():
    """importance = 1 - p(none); certainty = 1 - H(non-none probs renormalised) / ln(ops - 1); each min-max
    normalised over the candidates, then multiplied."""
    alpha = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.5, 0.4], [-1.0, 0.3, 0.2], [0.0, 0.0, 0.0]], dtype=torch.float64)
    importance, certainty = [], []
    for row in alpha.tolist():
        p = [math.exp(v) / sum(math.exp(u) for u in row) for v in row]
        rest = [p[1] / (p[1] + p[2]), p[2] / (p[1] + p[2])]
        importance.append(p[1] + p[2])
        certainty.append(1 + sum(q * math.log(q) for q in rest) / math.log(2))

    def min_max(values):
        return [(v - min(values)) / (max(values) - min(values)) for v in values]

    hand = [i * c for i, c in zip(min_max(importance), min_max(certainty))]
    assert edge_scores(alpha, 0, [0, 1, 2, 3]).tolist() == pytest.approx(hand, rel=1e-12)
    assert int(torch.argmax(edge_scores(alpha, 0, [0, 1, 2, 3]))) == 0  # sure of its op and little 'none'
    # rows 1 and 2 are equally certain (their non-none ops differ by 0.1 in both): certainty's range is 0, so is the score
    assert edge_scores(alpha, 0, [1, 2]).tolist() == pytest.approx([0.0, 0.0])


def test_a_node_is_pruned_once_it_keeps_two_edges_and_the_cap_moves_an_edge_to_its_next_op():
    # edges: node 0 <- 0, 1; node 1 <- 0, 1, 2
    cell = CellDecisions(DecisionCell(2, OPS, limits={"skip_connect": 1}))
    alpha = torch.tensor([[-9.0, 0.0, 0.1], [-9.0, 0.1, 0.0], [-9.0, 5.0, 0.0], [-9.0, 4.0, 1.0], [3.0, 0.0, 0.0]])
    assert cell.remaining == 4
    assert cell.decide_one(alpha) == (2, 1)  # the surest edge: node 1 <- 0 as skip_connect
    assert cell.decide_one(alpha) == (3, 2)  # node 1 <- 1 prefers skip, but the cell's one skip is spent: conv
    assert cell.pruned == {4} and cell.remaining == 2  # node 1 holds 2 edges: its third input is pruned
    cell.decide_one(alpha), cell.decide_one(alpha)
    assert cell.decided == {0: 2, 1: 2, 2: 1, 3: 2} and cell.remaining == 0
    cell.impose(alpha)
    probs = torch.softmax(alpha, dim=-1)
    assert probs[torch.arange(5), torch.tensor([2, 2, 1, 2, 0])].min() > 1 - 1e-6  # decided ops, pruned 'none'
    decoded = nasplat.decode_cell(alpha, OPS, 2, limits={"skip_connect": 1})
    assert sorted(decoded[2:]) == [("conv", 1), ("skip_connect", 0)]


def test_decisions_are_spread_over_the_search_and_done_before_its_last_epoch():
    assert decision_epochs(10, 0.2, 0.1) == list(range(2, 10))  # one edge per cell at the end of epochs 2..9
    assert decision_epochs(50, 0.2, 0.1) == list(range(10, 46))
    assert decision_epochs(10, 0.2, 0.1, warmup_epochs=4) == list(range(5, 10))  # not before arch updates start
    assert decision_epochs(2, 0.2, 0.1) == [1]
    supernet = nasplat.get_space("darts").supernet(num_classes=3, C=4, layers=3, reductions=1, max_skip_normal=2)
    decisions = SequentialDecisions(supernet.decision_cells(), supernet.arch_parameters(), 0.2, 0.1)
    lines = [decisions.end_epoch(epoch, 10) for epoch in range(1, 11)]
    assert lines[0] is None and lines[-1] is None
    assert [line.count(" node ") for line in lines[1:-1]] == [2] * 8  # one per cell at each decision epoch
    assert lines[1].startswith("sgas decided normal node ") and lines[1].endswith("(edges decided: normal 1/8, "
                                                                                  "reduce 1/8)")
    for name in ("normal", "reduce"):
        cell = decisions.cells[name]
        nodes = [node for node, _ in cell.edges]
        assert cell.remaining == 0 and len(cell.decided) == 8 and len(cell.pruned) == 14 - 8
        assert all(sum(nodes[e] == node for e in cell.decided) == 2 for node in range(4))
    normal = [nasplat.DARTS_OPS[op] for op in decisions.cells["normal"].decided.values()]
    assert normal.count("skip_connect") <= 2  # the space's skip cap binds the decisions


TINY = dict(image_size=16, train_samples=8, val_samples=4, batch_size=2, workers=1, epochs=4, arch_lr=0.05,
            space_options={"C": 2, "layers": 2, "reductions": 1, "max_skip_normal": 2}, remedy=["sgas"])


def test_a_search_ends_with_its_decided_cells_and_a_resume_keeps_them(tmp_path, capsys):
    search = SupernetSearch(SearchConfig(**TINY))
    genotypes, shares = [], []
    for _ in range(3):  # decisions at the ends of epochs 1, 2, 3 (3 + 3 + 2 per cell)
        shares.append(search.train_epoch()["remedy_sgas_decided"])
        genotypes.append(search.genotype())
    assert shares == pytest.approx([6 / 16, 12 / 16, 1.0])  # the epoch's metric: the share of the 16 edges decided
    lines = [line for line in capsys.readouterr().out.splitlines() if "sgas decided" in line]
    assert [line.split(":")[0] for line in lines] == [f"[nasplat] epoch {k}" for k in (1, 2, 3)]
    assert [line.count(" node ") for line in lines] == [6, 6, 4]
    assert lines[-1].endswith("(edges decided: normal 8/8, reduce 8/8)")
    search.save(tmp_path)
    search.train_epoch()  # the last epoch trains the decided network; the arch steps cannot move it
    genotypes.append(search.genotype())
    assert genotypes[-1] == genotypes[-2]
    decisions = search.bilevel.remedies.decisions
    for name, cell in decisions.cells.items():
        probs = torch.softmax(search.model.arch[name].detach(), dim=-1)
        decided = {**{e: 0 for e in cell.pruned}, **cell.decided}
        assert sorted(decided) == list(range(len(cell_edges(4))))
        assert min(float(probs[e, op]) for e, op in decided.items()) > 1 - 1e-6
        pairs = getattr(genotypes[-1], name)
        assert sorted(pairs) == sorted((nasplat.DARTS_OPS[op], cell.edges[e][1]) for e, op in cell.decided.items())

    resumed = SupernetSearch(SearchConfig(**TINY))
    resumed.restore(tmp_path)
    assert resumed.bilevel.remedies.decisions.state_dict() == decisions.state_dict()
    resumed.train_epoch()
    assert resumed.genotype() == genotypes[-1]


def test_auto_deeplab_decides_its_cell_and_decodes_it_back():
    space = nasplat.get_space("autodeeplab")
    supernet = space.supernet(num_classes=3, F=2, L=2, B=3)
    with torch.no_grad():
        supernet.arch["alpha"].normal_()
    decisions = SequentialDecisions(supernet.decision_cells(), supernet.arch_parameters(), 0.2, 0.1)
    for epoch in range(1, 11):
        decisions.end_epoch(epoch, 10)
    cell = decisions.cells["alpha"]
    assert cell.remaining == 0 and len(cell.decided) == 6 and len(cell.pruned) == 9 - 6
    genotype = space.decode(supernet.arch_parameters(), **supernet.decode_options())
    assert sorted(genotype.cell) == sorted((space.ops[op], cell.edges[e][1]) for e, op in cell.decided.items())
