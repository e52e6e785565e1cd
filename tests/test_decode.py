"""The DARTS decode rule (quark0/darts ``Network.genotype()``; REFERENCES.md section 1).

1. row softmax; 2. edge strength = max non-``none`` probability; 3. top-2 edges per node, stable
sort (ties -> lower source), stronger edge first; 4. op = argmax over non-``none`` ops, ties ->
lower op index. Expected outputs below are worked out by hand in the comments.
"""
import math

import pytest
import torch

import nasplat
from nasplat import DARTS_OPS, cell_edges, decode_cell
from search_spaces.darts import DARTS_V2, DartsGenotype

OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
       "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
IDX = {name: k for k, name in enumerate(OPS)}
FIRST_ROW = {0: 0, 1: 2, 2: 5, 3: 9}  # published: nodes 0-3 start at rows 0, 2, 5, 9


def row(node, source):
    return FIRST_ROW[node] + source


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def hand_alpha():
    """A [14, 8] logit matrix exercising every rule; expected decode in HAND_EXPECTED."""
    a = torch.zeros(14, 8)
    # ---- node 0 (rows 0, 1): both edges are kept; order by strength.
    # row 0 (source 0): `none` has the largest logit (10) -> must be ignored; sep_conv_5x5 = 1.
    #   non-none probs: e^1/(e^10+e^1+6) ~ 1.2e-4 (max, op sep_conv_5x5)
    a[row(0, 0), IDX["none"]] = 10.0
    a[row(0, 0), IDX["sep_conv_5x5"]] = 1.0
    # row 1 (source 1): tie between sep_conv_3x3 (4) and dil_conv_3x3 (6), logit 3 each
    #   -> op sep_conv_3x3 (lower index); strength e^3/(2e^3+6) ~ 0.43 > row 0 -> listed first.
    a[row(0, 1), IDX["sep_conv_3x3"]] = 3.0
    a[row(0, 1), IDX["dil_conv_3x3"]] = 3.0
    # ---- node 1 (rows 2-4): logits and softmax disagree.
    # source 0: one logit 5, the other six non-none logits 4.5, none 0
    #   -> max logit 5 (the largest raw logit of the node) but prob e^5/(e^5+6e^4.5+1) ~ 0.215
    a[row(1, 0), 1:] = 4.5
    a[row(1, 0), IDX["avg_pool_3x3"]] = 5.0
    # source 1: dil_conv_5x5 = 3, all others 0 -> max logit 3 (smallest) but prob e^3/(e^3+7) ~ 0.742
    a[row(1, 1), IDX["dil_conv_5x5"]] = 3.0
    # source 2: skip_connect = 4, the other seven 2 -> logit 4, prob e^4/(e^4+7e^2) ~ 0.514
    a[row(1, 2), :] = 2.0
    a[row(1, 2), IDX["skip_connect"]] = 4.0
    #   by logits: sources 0, 2; by softmax (correct): source 1 (0.742) then source 2 (0.514).
    # ---- node 2 (rows 5-8): a `none`-dominated edge must not win.
    # source 0: none = 10, dil_conv_5x5 = 2 -> non-none max prob e^2/(e^10+e^2+6) ~ 3.4e-4
    #   (with `none` counted this edge would be the strongest, ~0.9996)
    a[row(2, 0), IDX["none"]] = 10.0
    a[row(2, 0), IDX["dil_conv_5x5"]] = 2.0
    # source 1: all zero -> 1/8 = 0.125, op tie among all -> max_pool_3x3 (lowest non-none index)
    # source 2: avg_pool_3x3 = 1 -> e/(e+7) ~ 0.280
    a[row(2, 2), IDX["avg_pool_3x3"]] = 1.0
    # source 3: all zero -> 0.125, ties with source 1 -> source 1 (lower) is kept
    #   -> (avg_pool_3x3, 2), (max_pool_3x3, 1)
    # ---- node 3 (rows 9-13): exact tie between the two strongest edges.
    # sources 2 and 4: skip_connect = 2 (identical rows) -> e^2/(e^2+7) ~ 0.513 each
    # source 3: skip_connect = 1 -> 0.280; sources 0, 1 zero -> 0.125
    #   -> (skip_connect, 2) first (lower source wins the tie), then (skip_connect, 4)
    a[row(3, 2), IDX["skip_connect"]] = 2.0
    a[row(3, 4), IDX["skip_connect"]] = 2.0
    a[row(3, 3), IDX["skip_connect"]] = 1.0
    return a


HAND_EXPECTED = [
    ("sep_conv_3x3", 1), ("sep_conv_5x5", 0),
    ("dil_conv_5x5", 1), ("skip_connect", 2),
    ("avg_pool_3x3", 2), ("max_pool_3x3", 1),
    ("skip_connect", 2), ("skip_connect", 4),
]


def _as_lists(pairs):
    return [(op, int(src)) for op, src in pairs]


# ------------------------------------------------------------------ edge order


def test_cell_edges_matches_official_row_order():
    edges = cell_edges(4)
    assert len(edges) == 14
    assert edges[0:2] == [(0, 0), (0, 1)]
    assert edges[2:5] == [(1, 0), (1, 1), (1, 2)]
    assert edges[5:9] == [(2, 0), (2, 1), (2, 2), (2, 3)]
    assert edges[9:14] == [(3, 0), (3, 1), (3, 2), (3, 3), (3, 4)]
    # Auto-DeepLab cell: 5 blocks -> 2+3+4+5+6 = 20 edges
    assert len(cell_edges(5)) == 20


def test_ops_order_is_official():
    assert tuple(DARTS_OPS) == OPS


def test_hand_example_sanity_of_the_worked_numbers():
    """Check the hand-computed probabilities in the comments (independent pure-Python softmax)."""
    a = hand_alpha().tolist()
    strength = lambda r: max(softmax(a[r])[1:])
    assert strength(row(1, 0)) == pytest.approx(0.215, abs=1e-3)
    assert strength(row(1, 1)) == pytest.approx(0.742, abs=1e-3)
    assert strength(row(1, 2)) == pytest.approx(0.514, abs=1e-3)
    # logits alone would rank node 1 sources as 0 (5.0), 2 (4.0), 1 (3.0)
    assert max(a[row(1, 0)]) > max(a[row(1, 2)]) > max(a[row(1, 1)])
    assert softmax(a[row(2, 0)])[0] > 0.999


# ------------------------------------------------------------------ decode_cell


def test_decode_hand_example_exact():
    assert _as_lists(decode_cell(hand_alpha(), OPS, 4)) == HAND_EXPECTED


def test_none_largest_logit_is_ignored_for_op_and_strength():
    pairs = _as_lists(decode_cell(hand_alpha(), OPS, 4))
    assert all(op != "none" for op, _ in pairs)
    # node 0 keeps its none-dominated edge with the best non-none op, listed second
    assert pairs[1] == ("sep_conv_5x5", 0)
    # node 2 drops its none-dominated edge (source 0)
    assert 0 not in [src for _, src in pairs[4:6]]


def test_softmax_not_logits_ranks_edges():
    """khanrc/pt.darts#38: ranking by raw logits picks other edges."""
    pairs = _as_lists(decode_cell(hand_alpha(), OPS, 4))
    assert pairs[2:4] == [("dil_conv_5x5", 1), ("skip_connect", 2)]
    assert sorted(src for _, src in pairs[2:4]) != [0, 2]  # the logit answer


def test_softmax_vs_logits_isolated_node():
    """Only node 3 is informative; the softmax answer differs from the logits answer."""
    a = torch.zeros(14, 8)
    # source 0: logits all 6 except sep_conv_3x3 = 7 -> prob e^7/(e^7+7e^6) ~ 0.280
    a[row(3, 0), :] = 6.0
    a[row(3, 0), IDX["sep_conv_3x3"]] = 7.0
    # source 1: max_pool = 6.5, rest 6 -> lower than source 0 in both rankings
    a[row(3, 1), :] = 6.0
    a[row(3, 1), IDX["max_pool_3x3"]] = 6.5
    # source 3: dil_conv_3x3 = 2.5, rest 0 -> e^2.5/(e^2.5+7) ~ 0.635
    a[row(3, 3), IDX["dil_conv_3x3"]] = 2.5
    # source 4: sep_conv_5x5 = 2, rest 0 -> e^2/(e^2+7) ~ 0.514
    a[row(3, 4), IDX["sep_conv_5x5"]] = 2.0
    # source 2: zero -> 0.125
    pairs = _as_lists(decode_cell(a, OPS, 4))
    assert pairs[6:8] == [("dil_conv_3x3", 3), ("sep_conv_5x5", 4)]
    # node 0/1/2 rows all zero: all ties -> sources 0, 1 with max_pool_3x3
    assert pairs[0:6] == [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 3


def test_all_zero_alpha_breaks_every_tie_low():
    pairs = _as_lists(decode_cell(torch.zeros(14, 8), OPS, 4))
    assert pairs == [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4


def test_op_tie_goes_to_lower_index_even_when_later_in_row():
    a = torch.zeros(14, 8)
    # row 0: dil_conv_5x5 (7) and avg_pool_3x3 (2) tied at 4 -> avg_pool_3x3
    a[0, IDX["dil_conv_5x5"]] = 4.0
    a[0, IDX["avg_pool_3x3"]] = 4.0
    # row 1: none, skip_connect and sep_conv_5x5 tied at 4 -> skip_connect (none excluded)
    a[1, IDX["none"]] = 4.0
    a[1, IDX["skip_connect"]] = 4.0
    a[1, IDX["sep_conv_5x5"]] = 4.0
    pairs = _as_lists(decode_cell(a, OPS, 4))
    # row 0 strength e^4/(2e^4+6) ~ 0.45 > row 1 strength e^4/(3e^4+5) ~ 0.32 -> row 0 first
    assert pairs[0:2] == [("avg_pool_3x3", 0), ("skip_connect", 1)]


def test_stronger_edge_listed_first_even_if_higher_source():
    a = torch.zeros(14, 8)
    a[row(0, 0), IDX["sep_conv_3x3"]] = 1.0
    a[row(0, 1), IDX["sep_conv_5x5"]] = 2.0
    a[row(1, 2), IDX["dil_conv_3x3"]] = 3.0
    a[row(1, 0), IDX["max_pool_3x3"]] = 1.0
    pairs = _as_lists(decode_cell(a, OPS, 4))
    assert pairs[0:2] == [("sep_conv_5x5", 1), ("sep_conv_3x3", 0)]
    assert pairs[2:4] == [("dil_conv_3x3", 2), ("max_pool_3x3", 0)]


@pytest.mark.parametrize("shape", [(14, 7), (13, 8), (8, 14), (14,), (1, 14, 8), (20, 8)])
def test_wrong_alpha_shape_raises(shape):
    with pytest.raises(ValueError):
        decode_cell(torch.zeros(shape), OPS, 4)


def _official_parse(alpha):
    """Port of quark0/darts model_search.py Network.genotype()._parse on softmax(alpha)."""
    W_all = torch.softmax(torch.as_tensor(alpha, dtype=torch.float64), dim=-1).numpy()
    none = OPS.index("none")
    gene, n, start = [], 2, 0
    for i in range(4):
        end = start + n
        W = W_all[start:end].copy()
        edges = sorted(range(i + 2), key=lambda x: -max(W[x][k] for k in range(len(W[x])) if k != none))[:2]
        for j in edges:
            k_best = None
            for k in range(len(W[j])):
                if k != none and (k_best is None or W[j][k] > W[j][k_best]):
                    k_best = k
            gene.append((OPS[k_best], j))
        start = end
        n += 1
    return gene


def test_matches_port_of_official_code_on_random_alphas():
    gen = torch.Generator().manual_seed(1234)
    for scale in (1e-3, 1.0, 5.0):
        for _ in range(8):
            a = torch.randn(14, 8, generator=gen, dtype=torch.float64) * scale
            assert _as_lists(decode_cell(a, OPS, 4)) == _official_parse(a)
    assert _as_lists(decode_cell(hand_alpha(), OPS, 4)) == _official_parse(hand_alpha())


# ------------------------------------------------------------------ DartsSpace.decode


def _alpha_for(pairs, first=3.0, second=2.0):
    """Logits whose decode is ``pairs`` (first pair of each node stronger than the second)."""
    a = torch.zeros(14, 8)
    for k, (op, src) in enumerate(pairs):
        a[row(k // 2, src), IDX[op]] = first if k % 2 == 0 else second
    return a


def test_space_decode_dict_gives_darts_genotype():
    space = nasplat.get_space("darts")
    reduce_alpha = torch.zeros(14, 8)
    g = space.decode({"normal": hand_alpha(), "reduce": reduce_alpha})
    assert isinstance(g, DartsGenotype)
    assert _as_lists(g.normal) == HAND_EXPECTED
    assert _as_lists(g.reduce) == [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4
    assert list(g.normal_concat) == [2, 3, 4, 5]
    assert list(g.reduce_concat) == [2, 3, 4, 5]


def test_space_decode_reproduces_darts_v2_from_constructed_alphas():
    space = nasplat.get_space("darts")
    normal = [tuple(p) for p in DARTS_V2.normal]
    reduce = [tuple(p) for p in DARTS_V2.reduce]
    g = space.decode({"normal": _alpha_for(normal), "reduce": _alpha_for(reduce)})
    assert g == DARTS_V2


def test_space_decode_is_pure():
    space = nasplat.get_space("darts")
    gen = torch.Generator().manual_seed(7)
    arch = {"normal": torch.randn(14, 8, generator=gen), "reduce": torch.randn(14, 8, generator=gen)}
    before = {k: v.clone() for k, v in arch.items()}
    g1 = space.decode(arch)
    g2 = space.decode(arch)
    assert g1 == g2 and hash(g1) == hash(g2)
    for k in arch:
        assert torch.equal(arch[k], before[k])
    # equal inputs in another tensor object / dtype give the same genotype
    g3 = space.decode({k: v.clone().double() for k, v in arch.items()})
    assert g3 == g1


def test_space_decode_extra_keys_do_not_matter_but_normal_and_reduce_swap_does():
    space = nasplat.get_space("darts")
    n, r = hand_alpha(), torch.zeros(14, 8)
    g = space.decode({"normal": n, "reduce": r})
    assert space.decode({"normal": n, "reduce": r, "junk": torch.zeros(3)}) == g
    swapped = space.decode({"normal": r, "reduce": n})
    assert swapped.normal == g.reduce and swapped.reduce == g.normal


def test_decode_from_supernet_arch_parameters():
    space = nasplat.get_space("darts")
    net = space.supernet(num_classes=3, C=4, layers=3)
    arch = net.arch_parameters()
    normal = [tuple(p) for p in DARTS_V2.normal]
    reduce = [tuple(p) for p in DARTS_V2.reduce]
    with torch.no_grad():
        arch["normal"].copy_(_alpha_for(normal))
        arch["reduce"].copy_(_alpha_for(reduce))
    assert arch["normal"].requires_grad
    g = space.decode(net.arch_parameters())
    assert g == DARTS_V2
    # decoding did not touch the parameters
    assert torch.equal(net.arch_parameters()["normal"].detach(), _alpha_for(normal))


@pytest.mark.parametrize("keys", [("normal",), ("reduce",), ()])
def test_space_decode_missing_key_raises(keys):
    space = nasplat.get_space("darts")
    with pytest.raises(KeyError):
        space.decode({k: torch.zeros(14, 8) for k in keys})


def test_space_decode_wrong_shape_raises():
    space = nasplat.get_space("darts")
    with pytest.raises(ValueError):
        space.decode({"normal": torch.zeros(14, 7), "reduce": torch.zeros(14, 8)})


def _logits(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).log()


OPS3 = ("none", "skip_connect", "sep_conv_3x3")
CAP_EXAMPLE = _logits([  # 2 nodes: rows (node 0: sources 0, 1), (node 1: sources 0, 1, 2); columns OPS3
    [0.1, 0.8, 0.1], [0.1, 0.6, 0.3],
    [0.1, 0.7, 0.2], [0.1, 0.4, 0.5], [0.05, 0.9, 0.05],
])


def test_skip_cap_worked_example():
    """P-DARTS's refinement by hand: 4 skips decoded; the weakest kept skip (node 0, source 1, p=0.6) loses it and
    node 0 takes the conv there; then node 1's source 0 (p=0.7) loses it and node 1 keeps sources 2 and 1."""
    assert decode_cell(CAP_EXAMPLE, OPS3, 2) == [
        ("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 2), ("skip_connect", 0)]
    assert decode_cell(CAP_EXAMPLE, OPS3, 2, limits={"skip_connect": 2}) == [
        ("skip_connect", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("sep_conv_3x3", 1)]
    assert decode_cell(CAP_EXAMPLE, OPS3, 2, limits={"skip_connect": 0}) == [
        ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0)]
    assert decode_cell(CAP_EXAMPLE, OPS3, 2, limits={"skip_connect": 4}) == decode_cell(CAP_EXAMPLE, OPS3, 2)
    assert decode_cell(CAP_EXAMPLE, OPS3, 2, limits={"skip_connect": None}) == decode_cell(CAP_EXAMPLE, OPS3, 2)


@pytest.mark.parametrize("limits", [{"skip": 2}, {"skip_connect": -1}, {"skip_connect": 1.5}])
def test_bad_decode_limit_is_refused_by_name(limits):
    with pytest.raises(ValueError, match="decode limit"):
        decode_cell(CAP_EXAMPLE, OPS3, 2, limits=limits)


def test_darts_supernet_option_caps_the_normal_cell_only():
    space = nasplat.get_space("darts")
    supernet = space.supernet(num_classes=3, C=4, layers=3, max_skip_normal=2)
    skip = DARTS_OPS.index("skip_connect")
    with torch.no_grad():
        for name in ("normal", "reduce"):
            supernet.arch[name].zero_()
            supernet.arch[name][:, skip] = 3.0  # every edge prefers skip_connect
    capped = space.decode(supernet.arch_parameters(), **supernet.decode_options())
    assert sum(op == "skip_connect" for op, _ in capped.normal) == 2
    assert sum(op == "skip_connect" for op, _ in capped.reduce) == 8
    assert sum(op == "skip_connect" for op, _ in space.decode(supernet.arch_parameters()).normal) == 8
    top = space.top_genotypes(supernet.arch_parameters(), 3, **supernet.decode_options())
    assert top and all(sum(op == "skip_connect" for op, _ in g.normal) <= 2 for _, g in top)
    with pytest.raises(ValueError, match="max_skip_normal"):
        space.supernet(num_classes=3, C=4, layers=3, max_skip_normal=9)
