"""The Auto-DeepLab space (arXiv 1901.02985; REFERENCES.md section 2).

Published facts checked here: 20 cell edges (B=5), alpha [20, 8], beta [L, 4, 3] indexed by
source level; eq. 7 normalisation (boundary moves 1/2 under uniform beta) and the
NoamRosenberg 2/3 boundary scaling (1/3 everywhere); the Viterbi path decode; the published cell
and path; TF ``hnasnet`` endpoint shapes at 321x321 with 10 filters; Auto-DeepLab-S/M/L
parameter counts 10.15M / 21.62M / 44.42M (F = 20/32/48, 19 classes).
"""
import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F

import nasplat
from nasplat import GenotypeError, cell_edges, genotype_from_dict, get_space
from search_spaces.autodeeplab import (
    AUTODEEPLAB_OPS,
    PAPER_GENOTYPE,
    STRIDES,
    AtrousConv,
    AutoDeepLabGenotype,
    AutoDeepLabNetwork,
    AutoDeepLabSpace,
    AutoDeepLabSupernet,
    beta_mask,
    greedy_path,
    level_sizes,
    normalized_beta,
    path_log_prob,
    viterbi_path,
)

IDX = {name: k for k, name in enumerate(AUTODEEPLAB_OPS)}
TINY = dict(F=2, stem_channels=(8, 8, 16))  # small supernets for forward passes


@pytest.fixture
def space():
    return get_space("autodeeplab")


def count(module):
    return sum(p.numel() for p in module.parameters())


def ceil_chain(n):
    """ceil(n/4), then ceil halving: the size of levels 0..3."""
    sizes = [math.ceil(n / 4)]
    for _ in range(3):
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


# ------------------------------------------------------------------ registry and ops


def test_registered_space_and_ops(space):
    assert isinstance(space, AutoDeepLabSpace)
    assert "autodeeplab" in nasplat.available_spaces()
    assert space.ops == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                         "sep_conv_3x3", "sep_conv_5x5", "atrous_conv_3x3", "atrous_conv_5x5")
    assert {"atrous_conv_3x3", "atrous_conv_5x5"} <= set(nasplat.registered_ops())


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("H", [8, 9, 33])
def test_atrous_conv_is_full_rate_2_and_halves_to_ceil(k, H):
    C = 4
    op = nasplat.build_op(f"atrous_conv_{k}x{k}", C, 1)
    assert isinstance(op, AtrousConv)
    conv = [m for m in op.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(conv) == 1 and conv[0].groups == 1 and conv[0].dilation == (2, 2)
    assert conv[0].weight.shape == (C, C, k, k) and conv[0].bias is None
    x = torch.randn(1, C, H, H + 1)
    assert op(x).shape == x.shape
    down = nasplat.build_op(f"atrous_conv_{k}x{k}", C, 2)
    assert down(x).shape[-2:] == (math.ceil(H / 2), math.ceil((H + 1) / 2))
    assert count(op) == k * k * C * C + 2 * C  # conv + BN gamma/beta


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("H, W", [(8, 10), (9, 12), (33, 33)])
def test_strided_atrous_conv_is_tf_half_resize_then_rate_1(k, H, W):
    # TF nas_cell.py, atrous_kxk at stride 2: relu, resize_bilinear (align_corners=True) to
    # scale_dimension(n, 0.5) = int((n - 1) * 0.5 + 1), then a kxk conv at rate 1, then BN
    C = 3
    op = nasplat.build_op(f"atrous_conv_{k}x{k}", C, 2).eval()
    (conv,) = [m for m in op.modules() if isinstance(m, torch.nn.Conv2d)]
    (bn,) = [m for m in op.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for t in (bn.running_mean, bn.weight, bn.bias):
            t.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    assert count(op) == count(nasplat.build_op(f"atrous_conv_{k}x{k}", C, 1)) == k * k * C * C + 2 * C
    x = torch.randn(2, C, H, W)
    half = (int((H - 1) * 0.5 + 1), int((W - 1) * 0.5 + 1))
    resized = F.interpolate(torch.relu(x), size=half, mode="bilinear", align_corners=True)
    expected = F.batch_norm(F.conv2d(resized, conv.weight, padding=(k - 1) // 2), bn.running_mean, bn.running_var,
                            bn.weight, bn.bias, training=False, eps=bn.eps)
    out = op(x)
    assert out.shape[-2:] == (math.ceil(H / 2), math.ceil(W / 2))
    torch.testing.assert_close(out, expected)
    # on an odd size the corner-aligned half grid is every second pixel, so TF's op equals a
    # stride-2 conv at rate 2 there; on an even size it does not
    strided = F.batch_norm(F.conv2d(torch.relu(x), conv.weight, stride=2, padding=k - 1, dilation=2),
                           bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)
    assert torch.allclose(out, strided, atol=1e-5) == (H % 2 == 1 and W % 2 == 1)


# ------------------------------------------------------------------ cell and arch parameters


def test_cell_has_20_edges_in_published_order():
    edges = cell_edges(5)
    assert len(edges) == 20
    fan_in = [sum(1 for node, _ in edges if node == b) for b in range(5)]
    assert fan_in == [2, 3, 4, 5, 6]
    # inputs H^{l-2}, H^{l-1}, then earlier blocks, block-major
    assert edges[:5] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]


def test_arch_parameter_shapes_and_separation(space):
    net = space.supernet(num_classes=19, F=1, stem_channels=(4, 4, 4))  # default L=12, B=5
    arch = net.arch_parameters()
    assert set(arch) == {"alpha", "beta"}
    assert tuple(arch["alpha"].shape) == (20, len(space.ops))
    assert tuple(arch["beta"].shape) == (12, 4, 3)
    arch_ids = {id(p) for p in arch.values()}
    assert not arch_ids & {id(p) for p in net.weight_parameters()}
    assert net.L == 12 and net.B == 5 and net.beta_norm == "paper" and not net.checkpoint_cells
    assert sorted(int(k) for k in net.heads) == [0, 1, 2, 3]


def test_arch_init_is_small_gaussian():
    net = AutoDeepLabSupernet(3, L=3, B=2, **TINY)
    for p in net.arch_parameters().values():
        assert 0 < p.detach().abs().max() < 1e-2


# ------------------------------------------------------------------ beta normalisation


def test_beta_mask_reachability():
    mask = beta_mask(5)
    # layer 0: only the stem (level 0) feeds it, to stride 4 (k=1) and stride 8 (k=2)
    assert mask[0].nonzero().tolist() == [[0, 1], [0, 2]]
    # layer 1: fed by layer 0's levels 0 and 1
    assert mask[1, 0].tolist() == [False, True, True]
    assert mask[1, 1].tolist() == [True, True, True]
    assert not mask[1, 2:].any()
    # layer 2: levels 0..2 feed it; level 2 may still go coarser (to stride 32)
    assert mask[2, 2].tolist() == [True, True, True] and not mask[2, 3].any()
    # from layer 3 on: level 0 has no finer move, level 3 no coarser move
    for layer in (3, 4):
        assert mask[layer, 0].tolist() == [False, True, True]
        assert mask[layer, 1].all() and mask[layer, 2].all()
        assert mask[layer, 3].tolist() == [True, True, False]


def test_uniform_beta_paper_gives_one_half_at_the_boundary():
    mask = beta_mask(5)
    w = normalized_beta(torch.zeros(5, 4, 3), "paper")
    assert torch.equal(w == 0, ~mask)
    for layer, level in itertools.product(range(5), range(4)):
        moves = int(mask[layer, level].sum())
        if moves:
            assert torch.allclose(w[layer, level].sum(), torch.tensor(1.0))  # eq. 7
            assert torch.allclose(w[layer, level][mask[layer, level]], torch.tensor(1.0 / moves))
    assert w[0, 0].tolist() == pytest.approx([0, 0.5, 0.5])
    assert w[4, 3].tolist() == pytest.approx([0.5, 0.5, 0])
    assert w[4, 1].tolist() == pytest.approx([1 / 3] * 3)


def test_uniform_beta_boundary_scaled_gives_one_third_everywhere():
    mask = beta_mask(5)
    w = normalized_beta(torch.zeros(5, 4, 3), "boundary_scaled")
    assert torch.allclose(w[mask], torch.full((int(mask.sum()),), 1.0 / 3.0))
    assert torch.equal(w == 0, ~mask)
    assert w[0, 0].sum().item() == pytest.approx(2 / 3)  # the stem is a boundary node too
    assert w[3, 3].sum().item() == pytest.approx(2 / 3)
    assert w[3, 2].sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("beta_norm", ["paper", "boundary_scaled"])
def test_normalisation_ignores_missing_moves_and_their_gradient(beta_norm):
    beta = torch.randn(6, 4, 3, requires_grad=True)
    w = normalized_beta(beta, beta_norm)
    mask = beta_mask(6)
    changed = beta.detach().clone()
    changed[~mask] = 1e3 * torch.randn(int((~mask).sum()))  # junk in unused entries changes nothing
    assert torch.allclose(normalized_beta(changed, beta_norm), w)
    (w * torch.randn_like(w)).sum().backward()
    assert torch.isfinite(beta.grad).all()
    assert (beta.grad[~mask] == 0).all()
    # two-move rows: a 2-way softmax (times 2/3 when boundary_scaled)
    scale = 2 / 3 if beta_norm == "boundary_scaled" else 1.0
    expected = torch.softmax(beta.detach()[4, 0, 1:], 0) * scale
    assert torch.allclose(w[4, 0, 1:].detach(), expected)
    assert torch.allclose(w[4, 2].detach(), torch.softmax(beta.detach()[4, 2], 0))


def test_bad_beta_norm_is_refused():
    with pytest.raises(ValueError, match="beta_norm"):
        normalized_beta(torch.zeros(2, 4, 3), "softmax")
    with pytest.raises(ValueError, match="beta_norm"):
        AutoDeepLabSupernet(3, L=2, B=1, beta_norm="nope", **TINY)


# ------------------------------------------------------------------ path decode


def beta_from_probs(probs):
    """beta logits whose per-row softmax over the listed moves gives ``probs``: {(l, s): [p_k]}."""
    layers = 1 + max(layer for layer, _ in probs)
    beta = torch.zeros(layers, 4, 3, dtype=torch.float64)
    for (layer, level), row in probs.items():
        for k, p in enumerate(row):
            if p is not None:
                beta[layer, level, k] = math.log(p)
    return beta


def all_paths(layers):
    """Brute force: every level sequence that starts at level 0/1 and moves at most one level."""
    for levels in itertools.product(range(4), repeat=layers):
        if levels[0] <= 1 and all(abs(a - b) <= 1 for a, b in zip(levels, levels[1:])):
            yield levels


def brute_force_best(beta, beta_norm):
    w = normalized_beta(beta.double(), beta_norm)
    best, best_levels = -math.inf, None
    for levels in all_paths(beta.shape[0]):
        score, source = 0.0, 0
        for layer, target in enumerate(levels):
            score += math.log(w[layer, source, target - source + 1].item())
            source = target
        if score > best:
            best, best_levels = score, levels
    return [STRIDES[t] for t in best_levels], best


# Hand-worked (paper normalisation; rows list probabilities of k = finer, same, coarser):
#   levels 0,0,1: 0.7 * 0.6 * 0.55 = 0.231   <- greedy (0.7 > 0.3, 0.6 > 0.4, 0.55 > 0.45)
#   levels 1,2,3: 0.3 * 0.95 * 0.9 = 0.2565  <- Viterbi (every other path is lower, e.g.
#   0,1,2: 0.7 * 0.4 * 0.5 = 0.14; 0,0,0: 0.7 * 0.6 * 0.45 = 0.189)
HAND = {
    (0, 0): [None, 0.7, 0.3],
    (1, 0): [None, 0.6, 0.4],
    (1, 1): [0.025, 0.025, 0.95],
    (2, 0): [None, 0.45, 0.55],
    (2, 1): [0.2, 0.3, 0.5],
    (2, 2): [0.05, 0.05, 0.9],
}


def test_viterbi_on_hand_worked_beta_differs_from_greedy():
    beta = beta_from_probs(HAND)
    assert viterbi_path(beta, "paper") == [8, 16, 32]
    assert path_log_prob(beta, [8, 16, 32], "paper") == pytest.approx(math.log(0.2565))
    assert greedy_path(beta, "paper") == [4, 4, 8]
    assert path_log_prob(beta, [4, 4, 8], "paper") == pytest.approx(math.log(0.231))
    assert brute_force_best(beta, "paper") == ([8, 16, 32], pytest.approx(math.log(0.2565)))
    # boundary_scaled multiplies the level-0 rows by 2/3: 0.231 * (2/3)^3 vs 0.2565 * 2/3
    assert viterbi_path(beta, "boundary_scaled") == [8, 16, 32]
    assert path_log_prob(beta, [4, 4, 8], "boundary_scaled") == pytest.approx(math.log(0.231 * (2 / 3) ** 3))


def test_uniform_paper_beta_favours_boundary_hugging_paths():
    # eq. 7 consequence (REFERENCES): 1/2 at the boundary beats 1/3 in the middle
    beta = torch.zeros(6, 4, 3)
    assert viterbi_path(beta, "paper") == [4] * 6
    assert path_log_prob(beta, [4] * 6, "paper") == pytest.approx(6 * math.log(0.5))
    assert path_log_prob(beta, [4] * 6, "boundary_scaled") == pytest.approx(6 * math.log(1 / 3))


@pytest.mark.parametrize("beta_norm", ["paper", "boundary_scaled"])
@pytest.mark.parametrize("layers", [1, 2, 3, 5, 7])
def test_viterbi_matches_brute_force(beta_norm, layers):
    for _ in range(4):
        beta = 2.0 * torch.randn(layers, 4, 3)
        expected_path, expected_score = brute_force_best(beta, beta_norm)
        assert viterbi_path(beta, beta_norm) == expected_path
        assert path_log_prob(beta, expected_path, beta_norm) == pytest.approx(expected_score)


def test_bruteforce_oracle_path_counts():
    """Checks the test's own brute-force path enumerator (the Viterbi oracle) by a DP count."""
    counts = [sum(1 for _ in all_paths(n)) for n in range(1, 7)]
    assert counts[:3] == [2, 5, 13]  # [4],[8]; then 4->4,8 and 8->4,8,16; ...

    def dp_count(n):  # paths from the stem: layer l reaches levels 0..min(l+1, 3)
        ways = {0: 1}
        for _ in range(n):
            ways = {t: sum(ways.get(s, 0) for s in (t - 1, t, t + 1)) for t in range(4)}
            ways = {t: c for t, c in ways.items() if c}
        return sum(ways.values())

    assert [dp_count(n) for n in range(1, 7)] == counts
    # REFERENCES' doubt: 12 layers give ~7.5e4 paths, not the paper's 2.9e4
    assert 7.0e4 < dp_count(12) < 8.0e4


# ------------------------------------------------------------------ cell decode and genotype


def hand_alpha(pairs, blocks=5):
    """alpha where, in each block, the listed (op, input) pairs win (the first more strongly)."""
    alpha = 0.01 * torch.randn(len(cell_edges(blocks)), len(AUTODEEPLAB_OPS))
    first_row = [sum(2 + b for b in range(block)) for block in range(blocks)]
    for index, (op, source) in enumerate(pairs):
        block = index // 2
        alpha[first_row[block] + source, IDX[op]] = 4.0 if index % 2 == 0 else 3.0
    # a dominant 'none' is ignored when ranking edges and ops (DARTS rule)
    alpha[first_row[4] + 1, IDX["none"]] = 9.0
    return alpha


def test_decode_hand_made_alpha_gives_the_paper_cell(space):
    alpha = hand_alpha(PAPER_GENOTYPE.cell)
    beta = beta_from_probs(HAND).float()
    g = space.decode({"alpha": alpha, "beta": beta})
    assert g.cell == PAPER_GENOTYPE.cell
    assert g.cell_concat == (2, 3, 4, 5, 6)
    assert g.path == (8, 16, 32)
    assert g.beta_norm == "paper"
    # pure: another dtype / tensor object gives the same genotype; the input is untouched
    before = alpha.clone()
    assert space.decode({"alpha": alpha.double().clone(), "beta": beta.double()}) == g
    assert torch.equal(alpha, before)


def test_decode_paper_path_from_one_hot_like_beta(space):
    beta = torch.full((12, 4, 3), -5.0)
    levels = [STRIDES.index(s) for s in PAPER_GENOTYPE.path]
    source = 0
    for layer, target in enumerate(levels):
        beta[layer, source, target - source + 1] = 5.0
        source = target
    g = space.decode({"alpha": hand_alpha(PAPER_GENOTYPE.cell), "beta": beta})
    assert g == PAPER_GENOTYPE


def test_decode_uses_the_supernet_beta_norm(space):
    net = space.supernet(num_classes=3, L=3, B=2, beta_norm="boundary_scaled", **TINY)
    assert net.decode_options() == {"beta_norm": "boundary_scaled"}
    assert space.decode(net.arch_parameters(), **net.decode_options()).beta_norm == "boundary_scaled"
    plain = {k: v.detach().clone() for k, v in net.arch_parameters().items()}
    assert space.decode(plain).beta_norm == "paper"
    assert space.decode(plain, beta_norm="boundary_scaled") == space.decode(net.arch_parameters(), **net.decode_options())
    assert len(space.decode(plain).cell) == 4  # B=2 from alpha's 5 rows


def test_genotype_dict_and_round_trip():
    d = PAPER_GENOTYPE.to_dict()
    assert list(d) == ["space", "version", "cell", "cell_concat", "path", "beta_norm"]
    assert d["space"] == "autodeeplab" and d["version"] == 1
    assert d["cell"][0] == ["atrous_conv_5x5", 0] and len(d["cell"]) == 10
    assert d["cell_concat"] == [2, 3, 4, 5, 6]
    assert d["path"] == [4, 4, 4, 8, 16, 8, 16, 16, 32, 32, 16, 8]
    assert d["beta_norm"] == "paper"
    assert genotype_from_dict(d) == PAPER_GENOTYPE
    assert genotype_from_dict(json.loads(PAPER_GENOTYPE.to_json())) == PAPER_GENOTYPE
    assert PAPER_GENOTYPE.levels == (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)


def test_paper_genotype_matches_tf_hnasnet():
    # TF nas_network.hnasnet stores inputs 0/1 swapped (TF 0 = H^{l-1})
    tf_ops = ["atrous_5x5", "separable_3x3_2", "separable_3x3_2", "atrous_3x3", "separable_3x3_2",
              "separable_3x3_2", "separable_5x5_2", "separable_5x5_2", "separable_5x5_2", "atrous_5x5"]
    tf_inputs = [1, 0, 1, 0, 3, 1, 4, 2, 3, 5]
    names = {"atrous_5x5": "atrous_conv_5x5", "atrous_3x3": "atrous_conv_3x3",
             "separable_3x3_2": "sep_conv_3x3", "separable_5x5_2": "sep_conv_5x5"}
    swap = {0: 1, 1: 0}
    assert PAPER_GENOTYPE.cell == tuple((names[op], swap.get(i, i)) for op, i in zip(tf_ops, tf_inputs))
    assert [STRIDES.index(s) for s in PAPER_GENOTYPE.path] == [0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1]


def with_(**changes):
    d = PAPER_GENOTYPE.to_dict()
    d.update(changes)
    return d


@pytest.mark.parametrize("changes, field", [
    (dict(cell=[["conv_7x7", 0]] + PAPER_GENOTYPE.to_dict()["cell"][1:]), "cell[0]"),
    (dict(cell=PAPER_GENOTYPE.to_dict()["cell"][:3] + [["none", 1]] + PAPER_GENOTYPE.to_dict()["cell"][4:]), "cell[3]"),
    (dict(cell=[["sep_conv_3x3", 2]] + PAPER_GENOTYPE.to_dict()["cell"][1:]), "cell[0]"),  # block 0: 0..1
    (dict(cell=PAPER_GENOTYPE.to_dict()["cell"][:9] + [["sep_conv_3x3", 7]]), "cell[9]"),  # block 4: 0..5
    (dict(cell=PAPER_GENOTYPE.to_dict()["cell"][:8] + [["sep_conv_3x3", True], ["sep_conv_3x3", 0]]), "cell[8]"),
    (dict(cell=PAPER_GENOTYPE.to_dict()["cell"][:9]), "cell"),
    (dict(cell=[["sep_conv_3x3"]] * 10), "cell[0]"),
    (dict(cell_concat=[2, 3, 4, 5, 7]), "cell_concat"),
    (dict(cell_concat=[2, 2]), "cell_concat"),
    (dict(path=[]), "path"),
    (dict(path=[4, 4, 12]), "path[2]"),
    (dict(path=[4, 16, 8]), "path[1]"),
    (dict(path=[16, 8, 4]), "path[0]"),
    (dict(path=[4, 8, 16, 8, 32]), "path[4]"),
    (dict(beta_norm="softmax"), "beta_norm"),
])
def test_genotype_validation_names_the_field(changes, field):
    with pytest.raises(GenotypeError) as info:
        genotype_from_dict(with_(**changes))
    assert info.value.field == field, str(info.value)
    assert f"'{field}'" in str(info.value)


def test_genotype_from_dict_refuses_unknown_and_missing_fields():
    d = with_()
    d["extra"] = 1
    with pytest.raises(GenotypeError, match="extra"):
        genotype_from_dict(d)
    d = with_()
    del d["path"]
    with pytest.raises(GenotypeError) as info:
        genotype_from_dict(d)
    assert info.value.field == "path"


# ------------------------------------------------------------------ supernet


@pytest.mark.parametrize("H, W", [(64, 64), (65, 33)])
def test_supernet_state_shapes_even_and_odd(H, W):
    F, B, L = 2, 2, 5
    net = AutoDeepLabSupernet(num_classes=3, F=F, L=L, B=B, stem_channels=(8, 8, 16))
    x = torch.randn(2, 3, H, W)
    states = net.states(x)
    hs, ws = ceil_chain(H), ceil_chain(W)
    assert level_sizes((hs[0], ws[0])) == list(zip(hs, ws))
    assert len(states) == L
    for layer, nodes in enumerate(states):
        assert sorted(nodes) == list(range(min(layer + 1, 3) + 1))  # reachable levels
        for level, state in nodes.items():
            stride = STRIDES[level]
            assert tuple(state.shape) == (2, B * F * stride // 4, hs[level], ws[level]), (layer, level)
    assert net(x).shape == (2, 3, H, W)


def test_supernet_default_cell_width():
    net = AutoDeepLabSupernet(num_classes=3, F=1, L=2, stem_channels=(4, 4, 4))
    x = torch.randn(2, 3, 33, 33)
    states = net.states(x)
    assert states[1][2].shape == (2, 5 * 1 * 4, 3, 3)  # B*F*s/4 with B=5, s=16


def test_checkpoint_cells_same_output_and_gradients():
    # float64: the plain fused net runs the H^{l-2} edges once per node, the checkpointed one once per move
    kwargs = dict(num_classes=3, L=3, B=2, **TINY)
    torch.manual_seed(0)
    plain = AutoDeepLabSupernet(**kwargs).double()
    ckpt = AutoDeepLabSupernet(checkpoint_cells=True, **kwargs).double()
    with torch.no_grad():  # non-uniform architecture so every weight matters
        for p in plain.arch_parameters().values():
            p.normal_()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 33, 31, dtype=torch.float64)
    target = torch.randn(2, 3, 33, 31, dtype=torch.float64)
    outputs = []
    for net in (plain, ckpt):
        out = net(x)
        (out * target).sum().backward()
        outputs.append(out.detach())
    assert torch.allclose(outputs[0], outputs[1], atol=1e-6)
    grads = {n: p.grad for n, p in plain.named_parameters()}
    for name, p in ckpt.named_parameters():
        if grads[name] is None:
            assert p.grad is None, name
        else:
            assert torch.allclose(grads[name], p.grad, atol=1e-5, rtol=1e-4), name
    beta_grad = plain.arch_parameters()["beta"].grad
    assert torch.isfinite(beta_grad).all() and (beta_grad[~beta_mask(3)] == 0).all()
    assert (beta_grad[beta_mask(3)] != 0).all()
    # the recomputation does not update BN running statistics a second time
    buffers = dict(plain.named_buffers())
    for name, b in ckpt.named_buffers():
        assert torch.allclose(buffers[name].float(), b.float(), atol=1e-6), name


def test_checkpoint_cells_under_functional_call():
    # the second-order arch step evaluates the net at substituted weights (w', w+-) through
    # torch.func.functional_call; the recomputation must use those, not the module's own
    kwargs = dict(num_classes=3, L=3, B=2, **TINY)
    plain = AutoDeepLabSupernet(**kwargs)
    ckpt = AutoDeepLabSupernet(checkpoint_cells=True, **kwargs)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 17, 17)
    for weights_require_grad in (True, False):
        shifted = {n: (p.detach() + 0.05 * torch.randn_like(p)).requires_grad_(weights_require_grad or n.startswith("arch."))
                   for n, p in plain.named_parameters()}
        grads = []
        for net in (plain, ckpt):
            out = torch.func.functional_call(net, shifted, (x,))
            inputs = [t for t in shifted.values() if t.requires_grad]
            grads.append(torch.autograd.grad(out.square().mean(), inputs, allow_unused=True))
        for a, b in zip(*grads):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


# Cells whose H^{l-2} does not exist at their stride (issue 15): layer 2 at strides 16 and 32, layer 3
# at 32. Layers 0 and 1 get the stem's stride-2 / stride-4 output, as TF hnasnet feeds cells 0 and 1.
NO_SECOND_INPUT = {(2, 2), (2, 3), (3, 3)}
INPUT0_ROWS = [row for row, (_, source) in enumerate(cell_edges(2)) if source == 0]  # B = 2: rows 0, 2


def test_second_cell_input_is_the_stem_or_the_same_stride_node_or_nothing():
    stem_channels = (8, 12, 16)
    net = AutoDeepLabSupernet(num_classes=3, F=2, L=5, B=2, stem_channels=stem_channels)
    missing = {(layer, int(level)) for layer, nodes in enumerate(net.cells) for level, node in nodes.items()
               if node.pre0 is None}
    assert missing == NO_SECOND_INPUT
    for layer, nodes in enumerate(net.cells):
        for level, node in nodes.items():
            edges = [m for m in node.dag.modules() if isinstance(m, nasplat.MixedOp)]
            assert len(edges) == (3 if (layer, int(level)) in NO_SECOND_INPUT else 5)  # 2 + 3 edges, less input 0's
            if node.pre0 is not None:
                C_in = node.pre0.op[1].in_channels
                assert C_in == {0: 12, 1: 16}.get(layer, 2 * 2 * 2 ** int(level)), (layer, level)
    seen = {}
    for layer in (0, 1):
        for level, node in net.cells[layer].items():
            node.pre0.register_forward_hook(lambda m, args, out, key=(layer, int(level)): seen.update({key: args[0]}))
    x = torch.randn(2, 3, 37, 29)
    net.states(x)
    half, stem = net.stem(x)
    for (layer, level), got in seen.items():
        size = ceil_chain(37)[level], ceil_chain(29)[level]
        source = half if layer == 0 else stem
        expected = source if source.shape[-2:] == size else F.interpolate(source, size=size, mode="bilinear",
                                                                          align_corners=False)
        torch.testing.assert_close(got, expected)
    assert sorted(seen) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]


def test_missing_second_input_edges_add_nothing_to_the_alpha_gradient():
    torch.manual_seed(0)
    # float64: the two gradients below sum the same terms in different orders. Per-edge path: every alpha
    # gradient then flows through a cell call (the fused path shares H^{l-2}'s edges between calls, with the same
    # gradients: tests/test_fused_cell.py)
    net = AutoDeepLabSupernet(num_classes=3, F=2, L=4, B=2, stem_channels=(8, 8, 16), fused=False).double()
    with torch.no_grad():
        for p in net.arch_parameters().values():
            p.normal_()
    x, target = torch.randn(2, 3, 33, 29, dtype=torch.float64), torch.randn(2, 3, 33, 29, dtype=torch.float64)
    alpha = net.arch_parameters()["alpha"]
    (alpha_grad,) = torch.autograd.grad((net(x) * target).sum(), alpha)  # train mode: batch statistics
    calls = []  # (layer, level, the weights this cell call saw as a leaf of its own)
    for layer, nodes in enumerate(net.cells):
        for level, node in nodes.items():
            def run(direction, h1, s0, weights, size, edge_weights=None, s0_terms=None, forward=node.forward,
                    key=(layer, int(level))):
                assert s0_terms is None and edge_weights is None
                leaf = weights.detach().requires_grad_()
                calls.append((*key, leaf))
                return forward(direction, h1, s0, leaf, size)
            node.forward = run
    (net(x) * target).sum().backward()
    assert alpha.grad is None  # every path from alpha to the loss goes through a cell call
    ops_but_none = [k for k, name in enumerate(AUTODEEPLAB_OPS) if name != "none"]
    other_rows = [row for row in range(len(cell_edges(2))) if row not in INPUT0_ROWS]
    for layer, level, leaf in calls:
        grad = leaf.grad
        assert (grad[other_rows][:, ops_but_none] != 0).all(), (layer, level)
        if (layer, level) in NO_SECOND_INPUT:
            assert (grad[INPUT0_ROWS] == 0).all(), (layer, level)  # exactly: those edges do not exist
        else:
            assert (grad[INPUT0_ROWS][:, ops_but_none] != 0).all(), (layer, level)
    assert {(layer, level) for layer, level, _ in calls} >= NO_SECOND_INPUT
    # the per-call contributions are all there is: through the softmax they sum to alpha's gradient
    total = sum(leaf.grad for *_, leaf in calls)
    (expected,) = torch.autograd.grad(torch.softmax(alpha, dim=-1), alpha, total)
    torch.testing.assert_close(alpha_grad, expected)


def test_hand_built_cell_without_second_input():
    # all weight on skip_connect, B = 2: with no H^{l-2}, block 0 = s1 and block 1 = s1 + block 0;
    # had H^{l-1} been fed as both inputs (the old supernet), block 0 would be 2 * s1
    from search_spaces.autodeeplab.supernet import SearchNode

    C = 4
    node = SearchNode(2, {2: C}, None, C, 2, AUTODEEPLAB_OPS)
    weights = torch.zeros(len(cell_edges(2)), len(AUTODEEPLAB_OPS))
    weights[:, IDX["skip_connect"]] = 1.0
    h1 = torch.randn(2, C, 5, 6)
    conv = node.pre["same"].op[1].weight
    s1 = F.batch_norm(F.conv2d(torch.relu(h1), conv), None, None, training=True)  # ReLU-1x1-BN, no affine
    out = node("same", h1, None, weights, (5, 6))
    torch.testing.assert_close(out, torch.cat([s1, 2 * s1], dim=1))


# ------------------------------------------------------------------ retrain network


def test_paper_s_m_l_param_counts(space):
    published = {20: 10.15e6, 32: 21.62e6, 48: 44.42e6}
    for F, target in published.items():
        with torch.device("meta"):
            net = space.build(PAPER_GENOTYPE, num_classes=19, F=F)
        total = count(net)
        print(f"Auto-DeepLab F={F}: {total:,} parameters (paper {target / 1e6:.2f}M)")
        assert abs(total - target) / target < 0.01
        assert round(total / 1e4) == round(target / 1e4)  # in fact equal at the paper's precision


def test_tf_hnasnet_endpoint_shapes_at_321():
    # REFERENCES: nas_network_test.py, published path, 10 filters, 321x321
    with torch.device("meta"):  # shapes only, no arithmetic
        net = AutoDeepLabNetwork(PAPER_GENOTYPE, num_classes=19, F=10)
        feats = net.features(torch.empty(1, 3, 321, 321))
    shapes = [tuple(f.shape[1:]) for f in feats[1:]]
    expected = [(128, 81, 81)] + [(50, 81, 81)] * 3 + [(100, 41, 41), (200, 21, 21), (100, 41, 41),
                (200, 21, 21), (200, 21, 21), (400, 11, 11), (400, 11, 11), (200, 21, 21), (100, 41, 41)]
    assert shapes == expected
    assert net.low_level_cell == 2 and net.aspp_rates == (12, 24, 36)  # output stride 8


@pytest.mark.parametrize("H, W", [(64, 64), (65, 47)])
def test_built_network_output_shape(space, H, W):
    net = space.build(PAPER_GENOTYPE, num_classes=19, F=4)
    out = net(torch.randn(2, 3, H, W))
    assert out.shape == (2, 19, H, W)


def test_built_network_other_path_and_drop_path(space):
    g = AutoDeepLabGenotype(cell=PAPER_GENOTYPE.cell, cell_concat=[2, 3, 4, 5, 6], path=[8, 16, 32, 16],
                            beta_norm="boundary_scaled")
    net = space.build(g, num_classes=5, F=2, drop_path=0.2)
    assert net.low_level_cell == -1  # starts at stride 8: the decoder taps the stem
    assert net.aspp_rates == (6, 12, 18)  # last cell at output stride 16
    assert net(torch.randn(2, 3, 33, 35)).shape == (2, 5, 33, 35)
    with pytest.raises(TypeError):
        space.build(object(), num_classes=5)


def test_decoded_genotype_builds(space):
    net = space.supernet(num_classes=3, L=4, B=2, **TINY)
    g = space.decode(net.arch_parameters())
    assert len(g.path) == 4 and g.path[0] in (4, 8) and len(g.cell) == 4
    assert genotype_from_dict(g.to_dict()) == g
    built = space.build(g, num_classes=3, F=2).eval()
    assert built(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_retrain_second_inputs_are_the_stem_outputs_then_the_cell_two_back():
    # REFERENCES section 2: for cell 0, H^{l-2} is the 64-channel stride-2 stem output (TF hnasnet);
    # cell 1 gets the 128-channel stride-4 one, cell l >= 2 the output of cell l-2 (5 blocks of F*2^level)
    net = AutoDeepLabNetwork(PAPER_GENOTYPE, num_classes=19, F=20)
    widths = [cell.pre0.op[1].in_channels for cell in net.cells]
    levels = [STRIDES.index(s) for s in PAPER_GENOTYPE.path]
    assert widths == [64, 128] + [5 * 20 * 2 ** level for level in levels[:-2]]
    small = AutoDeepLabNetwork(PAPER_GENOTYPE, num_classes=3, F=2, stem_channels=(4, 6, 8)).eval()
    seen = []
    small.cells[0].pre0.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    x = torch.randn(1, 3, 37, 41)
    with torch.no_grad():
        small(x)
        half, stem = small.stem(x)
    torch.testing.assert_close(seen[0], F.interpolate(half, size=stem.shape[-2:], mode="bilinear", align_corners=False))
