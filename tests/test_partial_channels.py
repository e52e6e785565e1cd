"""PC-DARTS (Xu et al., ICLR 2020, arXiv 1907.05737) as space options: partial channel connections (sec. 3.2) and
edge normalisation (sec. 3.3), checked against the paper's definitions written out by hand."""
from __future__ import annotations

import pytest
import torch

import nasplat
from nasplat import MixedCell, MixedOp, channel_shuffle, decode_cell, node_edge_weights

OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
       "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


def test_channel_shuffle_interleaves_the_groups():
    """ShuffleNet's shuffle with 4 groups of 2 channels: group g's channel i goes to position i * 4 + g."""
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_edge_is_the_ops_on_a_quarter_then_the_bypass_shuffled(stride):
    """Paper sec. 3.2 with K = 4: the ops see channels [0, C/4), the other channels bypass them (2x2 max pool on a
    stride-2 edge), the concatenation is shuffled; the ops are those of a C/4-channel edge."""
    torch.manual_seed(0)
    edge = MixedOp(16, stride, OPS, partial_channels=4).double()
    small = MixedOp(4, stride, OPS).double()
    assert sum(p.numel() for p in edge.parameters()) == sum(p.numel() for p in small.parameters())
    small.load_state_dict(edge.state_dict())
    x = torch.randn(2, 16, 9, 9, dtype=torch.float64)
    w = torch.softmax(torch.randn(len(OPS), dtype=torch.float64), 0)
    bypass = x[:, 4:] if stride == 1 else torch.nn.functional.max_pool2d(x[:, 4:], 2, 2, ceil_mode=True)
    processed = small(x[:, :4], w)
    assert processed.shape[-1] == bypass.shape[-1] == (9 if stride == 1 else 5)  # strided ops give ceil(9/2)
    joined = torch.cat([processed, bypass], 1)
    expected = joined.view(2, 4, 4, *joined.shape[-2:]).transpose(1, 2).reshape(joined.shape)
    torch.testing.assert_close(edge(x, w), expected)


def test_partial_channels_must_divide_the_channels():
    with pytest.raises(ValueError, match="partial_channels=3 must divide the 8 channels"):
        MixedOp(8, 1, OPS, partial_channels=3)
    with pytest.raises(ValueError, match=r"space option partial_channels=3 must divide .* \(C=8\)"):
        nasplat.get_space("darts").min_image_size(C=8, partial_channels=3)
    with pytest.raises(ValueError, match="edge_normalization must be true, false or null"):
        nasplat.get_space("darts").supernet(3, C=4, layers=3, edge_normalization="yes")


def test_edge_normalisation_weights_each_node_sum():
    """Sec. 3.3: node j = sum over its edges i of softmax_i(beta_j) * edge_ij; node 0 of a 2-input cell with
    beta = (0, log 3) takes 1/4 of edge 0 and 3/4 of edge 1."""
    torch.manual_seed(0)
    cell = MixedCell(4, 1, OPS, fused=False).double()
    inputs = [torch.randn(1, 4, 5, 5, dtype=torch.float64) for _ in range(2)]
    weights = torch.softmax(torch.randn(2, len(OPS), dtype=torch.float64), -1)
    edge_weights = node_edge_weights([torch.tensor([0.0, torch.log(torch.tensor(3.0))], dtype=torch.float64)])
    torch.testing.assert_close(edge_weights, torch.tensor([0.25, 0.75], dtype=torch.float64))
    node = cell(inputs, weights, edge_weights=edge_weights)[-1]
    expected = 0.25 * cell.edges[0](inputs[0], weights[0]) + 0.75 * cell.edges[1](inputs[1], weights[1])
    torch.testing.assert_close(node, expected)


def test_decode_ranks_a_nodes_edges_by_edge_weight_times_op_probability():
    """Node 0 keeps both of its 2 edges; node 1 (rows 2-4: sources 0, 1, 2) keeps 2 of 3. Row 2's best op has
    probability 0.6, row 3's 0.5, row 4's 0.4 (by hand below). Without edge weights: sources 0 and 1. With node 1's
    edge weights (0.2, 0.3, 0.5): strengths 0.12, 0.15, 0.20, so sources 2 and 1, source 2 first; ops unchanged."""
    alpha = torch.full((5, len(OPS)), -30.0)
    for row, (op, p) in {0: ("sep_conv_3x3", 0.9), 1: ("skip_connect", 0.9), 2: ("sep_conv_5x5", 0.6),
                         3: ("dil_conv_3x3", 0.5), 4: ("max_pool_3x3", 0.4)}.items():
        alpha[row, OPS.index(op)] = torch.log(torch.tensor(p))
        alpha[row, OPS.index("none")] = torch.log(torch.tensor(1 - p))
    plain = decode_cell(alpha, OPS, num_nodes=2)
    assert plain[2:] == [("sep_conv_5x5", 0), ("dil_conv_3x3", 1)]
    edge_weights = torch.tensor([0.5, 0.5, 0.2, 0.3, 0.5])
    assert decode_cell(alpha, OPS, num_nodes=2, edge_weights=edge_weights)[2:] == [("max_pool_3x3", 2),
                                                                                  ("dil_conv_3x3", 1)]
    with pytest.raises(ValueError, match=r"edge_weights has shape \(4,\), expected \(5,\)"):
        decode_cell(alpha, OPS, num_nodes=2, edge_weights=torch.ones(4))


def test_darts_supernet_with_pc_darts_options():
    """partial_channels=4 builds ops of a quarter of the channels and one edge-weight tensor per node and cell
    (fan-in 2, 3, 4, 5); the decode and the top-k use them; without partial channels the space is unchanged."""
    space = nasplat.get_space("darts")
    plain = space.supernet(3, C=8, layers=3)
    pc = space.supernet(3, C=8, layers=3, partial_channels=4)
    assert list(plain.arch_parameters()) == ["normal", "reduce"]
    shapes = {name: tuple(p.shape) for name, p in pc.arch_parameters().items()}
    assert shapes == {"normal": (14, 8), "reduce": (14, 8),
                      **{f"{cell}_edges{node}": (2 + node,) for cell in ("normal", "reduce") for node in range(4)}}
    first = pc.net.cells[0].dag.edges[0]
    assert first.partial_channels == 4 and first.candidates[OPS.index("sep_conv_3x3")].op[1].in_channels == 2
    arch = {name: p.detach().clone() for name, p in pc.arch_parameters().items()}
    with torch.no_grad():
        arch["normal"].zero_()
        arch["normal"][:, OPS.index("sep_conv_3x3")] = 5.0  # every edge alike: the edge weights decide the inputs
        arch["normal_edges1"].copy_(torch.tensor([0.0, 4.0, 8.0]))  # node 1: sources 2 then 1
    genotype = space.decode(arch, **pc.decode_options())
    assert genotype.normal[2:4] == (("sep_conv_3x3", 2), ("sep_conv_3x3", 1))
    assert space.top_genotypes(arch, 1, **pc.decode_options())[0][1] == genotype
    pc(torch.randn(2, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pc.arch_parameters().values())


def test_autodeeplab_supernet_with_pc_darts_options(tmp_path):
    """Auto-DeepLab with partial_channels=2: one edge-weight tensor per block (fan-in 2..B+1); a cell without
    H^{l-2} (layer 2 at stride 16) weighs the edges that exist, so the "input 0" logits get no gradient from it;
    checkpointed cells give the plain supernet's outputs; the decode uses the edge weights; pictures draw them."""
    space = nasplat.get_space("autodeeplab")
    options = dict(F=2, L=3, B=3, stem_channels=(4, 4, 8), partial_channels=2)
    torch.manual_seed(0)
    net = space.supernet(3, **options)
    assert {n: tuple(p.shape) for n, p in net.arch_parameters().items() if "edges" in n} == {
        "alpha_edges0": (2,), "alpha_edges1": (3,), "alpha_edges2": (4,)}
    assert net.cells[0]["0"].dag.edges[0].candidates[-1].conv.in_channels == 1  # F/K = 1 channel through the ops
    torch.manual_seed(0)
    checkpointed = space.supernet(3, checkpoint_cells=True, **options)
    checkpointed.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 64, 64)
    out = net(x)
    torch.testing.assert_close(checkpointed(x), out)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.arch_parameters().values())
    node = net.cells[2]["2"]  # layer 2 at stride 16: no H^{l-2}
    assert node.rows is not None
    edge_weights = (nasplat.cell_edge_weights(net.arch, "alpha", 3), nasplat.cell_edge_weights(net.arch, "alpha", 3, 1))
    moved = node("down", torch.randn(2, 12, 8, 8), None, torch.softmax(net.arch["alpha"], -1), (4, 4), edge_weights)
    betas = [net.arch[f"alpha_edges{block}"] for block in range(3)]
    grads = torch.autograd.grad(moved.square().sum(), betas)
    assert grads[0].abs().sum() == 0  # block 0 has one edge left: its weight is 1 whatever the logits
    for grad in grads[1:]:
        assert grad[0] == 0 and grad[1:].abs().sum() > 0
    arch = {name: p.detach().clone() for name, p in net.arch_parameters().items()}
    with torch.no_grad():
        arch["alpha"].zero_()
        arch["alpha"][:, space.ops.index("sep_conv_3x3")] = 5.0
        arch["alpha_edges2"].copy_(torch.tensor([0.0, 1.0, 9.0, 8.0]))  # block 2: sources 2 then 3
    genotype = space.decode(arch, **net.decode_options())
    assert genotype.cell[4:6] == (("sep_conv_3x3", 2), ("sep_conv_3x3", 3))
    distributions = net.arch_distributions()
    torch.testing.assert_close(distributions["alpha_edges2"], torch.softmax(net.arch["alpha_edges2"].detach(), -1))
    pictures = space.figures(genotype, tmp_path, distributions, history=[(1, distributions), (2, distributions)])
    assert tmp_path / "evolution_alpha_edges2.png" in pictures
    with pytest.raises(ValueError, match=r"space option partial_channels=3 must divide the 2 channels.*F=2"):
        space.min_image_size(F=2, partial_channels=3)
