"""The DARTS search space: published parameter counts, shapes, reductions, registry.

Parameter counts are the ones computed from the official quark0/darts code (REFERENCES.md
section 1): DARTS_V2 CIFAR network (20 cells, C=36, no aux head) 3,349,342; supernet (8 cells,
C=16) 1,930,618. Our segmentation head replaces the CIFAR classifier, so the comparison counts
stem + cells and adds the official Linear(C_prev, 10) classifier.
"""
import dataclasses
from typing import ClassVar

import pytest
import torch
from torch import nn

import nasplat
from nasplat import Genotype, SearchSpace, UnknownSpaceError, get_space, register_space
from nasplat.spaces import registry as space_module
from search_spaces.darts import DARTS_V2, DartsGenotype, DartsNetwork, DartsSpace, DartsSupernet, reduction_layers

OFFICIAL_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


@pytest.fixture
def space():
    return get_space("darts")


def count(module):
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------ published counts


def test_darts_v2_cifar_param_count(space):
    net = space.build(DARTS_V2, num_classes=10, C=36, layers=20)
    # official classifier: Linear(C_prev = 4 nodes * 4C = 576, 10)
    classifier = 576 * 10 + 10
    assert count(net.net.stem) + count(net.net.cells) + classifier == 3_349_342


def test_supernet_param_count(space):
    net = space.supernet(num_classes=10, C=16, layers=8)
    classifier = 256 * 10 + 10  # C_prev = 4 * 4C = 256
    total = count(net.net.stem) + count(net.net.cells) + classifier
    assert total == 1_930_618
    # arch params are not among those
    arch_ids = {id(p) for p in net.arch_parameters().values()}
    assert not arch_ids & {id(p) for p in net.net.parameters()}


# ------------------------------------------------------------------ arch parameters


def test_arch_parameters_shape_and_separation(space):
    net = space.supernet(num_classes=3, C=4, layers=3)
    arch = net.arch_parameters()
    assert set(arch) == {"normal", "reduce"}
    for alpha in arch.values():
        assert tuple(alpha.shape) == (14, 8)
        assert isinstance(alpha, nn.Parameter) and alpha.requires_grad
    weight_ids = {id(p) for p in net.weight_parameters()}
    assert not weight_ids & {id(a) for a in arch.values()}
    # weights + arch = every parameter, nothing lost
    all_ids = {id(p) for p in net.parameters()}
    assert all_ids == weight_ids | {id(a) for a in arch.values()}
    assert len(net.weight_parameters()) == len(list(net.parameters())) - 2
    # arch params travel with the state_dict
    state = net.state_dict()
    arch_keys = [k for k, v in state.items() if v.shape == (14, 8)]
    assert len(arch_keys) == 2
    for _name, alpha in arch.items():
        assert any(torch.equal(state[k], alpha.detach()) for k in arch_keys)


def test_arch_parameters_initialised_small(space):
    """Code init: 1e-3 * N(0,1) (not all equal, tiny)."""
    net = space.supernet(num_classes=3, C=4, layers=3)
    for alpha in net.arch_parameters().values():
        assert alpha.abs().max().item() < 1e-2
        assert alpha.std().item() > 0


def test_state_dict_round_trip_restores_arch(space):
    a = space.supernet(num_classes=3, C=4, layers=3)
    b = space.supernet(num_classes=3, C=4, layers=3)
    with torch.no_grad():
        a.arch_parameters()["normal"].fill_(0.5)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.arch_parameters()["normal"], a.arch_parameters()["normal"])


def test_arch_gradients_flow(space):
    net = space.supernet(num_classes=3, C=4, layers=3)
    out = net(torch.randn(2, 3, 8, 8))
    out.sum().backward()
    for alpha in net.arch_parameters().values():
        assert alpha.grad is not None and alpha.grad.abs().sum() > 0


# ------------------------------------------------------------------ shapes


@pytest.mark.parametrize("stem_stride", [1, 2])
@pytest.mark.parametrize("size", [(32, 32), (33, 47), (17, 9)])
def test_supernet_logits_match_input_size(space, size, stem_stride):
    net = space.supernet(num_classes=5, C=4, layers=3, reductions=2, stem_stride=stem_stride)
    out = net(torch.randn(2, 3, *size))
    assert tuple(out.shape) == (2, 5, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("stem_stride", [1, 2])
@pytest.mark.parametrize("size", [(32, 32), (33, 47), (17, 9)])
def test_built_network_logits_match_input_size(space, size, stem_stride):
    net = space.build(DARTS_V2, num_classes=5, C=4, layers=3, reductions=2, stem_stride=stem_stride)
    out = net(torch.randn(2, 3, *size))
    assert tuple(out.shape) == (2, 5, *size)
    assert torch.isfinite(out).all()


def test_built_network_eval_mode_batch_one(space):
    net = space.build(DARTS_V2, num_classes=4, C=4, layers=3).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 21, 13))
    assert tuple(out.shape) == (1, 4, 21, 13)


# ------------------------------------------------------------------ reductions


def test_reduction_layers_published_positions():
    assert reduction_layers(8, 2) == (2, 5)
    assert reduction_layers(20, 2) == (6, 13)
    for layers in range(3, 40):
        assert reduction_layers(layers, 2) == (layers // 3, 2 * layers // 3)
    assert reduction_layers(5, 0) == ()


@pytest.mark.parametrize("layers,reductions", [(0, 0), (-1, 0), (2, 2), (3, 3), (8, 9), (8, -1)])
def test_reduction_layers_bad_values(layers, reductions):
    with pytest.raises(ValueError):
        reduction_layers(layers, reductions)


def _cell_output_shapes(net, x):
    shapes = []
    hooks = [cell.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for cell in net.net.cells]
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    return shapes


@pytest.mark.parametrize("kind", ["supernet", "build"])
def test_reduction_cells_at_published_positions_and_channels_double(space, kind):
    C = 4
    if kind == "supernet":
        net = space.supernet(num_classes=3, C=C, layers=8)
    else:
        net = space.build(DARTS_V2, num_classes=3, C=C, layers=8)
    shapes = _cell_output_shapes(net, torch.randn(2, 3, 16, 16))
    assert len(shapes) == 8
    # cells output 4 nodes * C_cell channels; C doubles (and H, W halve) at cells 2 and 5
    expected = [(2, 4 * C, 16, 16)] * 2 + [(2, 8 * C, 8, 8)] * 3 + [(2, 16 * C, 4, 4)] * 3
    assert shapes == expected


def test_reduction_cells_flag_in_supernet(space):
    net = space.supernet(num_classes=3, C=4, layers=8)
    flags = [i for i, cell in enumerate(net.net.cells) if cell.reduction]
    assert flags == [2, 5]


def test_subset_concat_changes_cell_width(space):
    g = DartsGenotype(normal=DARTS_V2.normal, normal_concat=(4, 5), reduce=DARTS_V2.reduce, reduce_concat=(2, 3, 4, 5))
    net = space.build(g, num_classes=3, C=4, layers=3)
    shapes = _cell_output_shapes(net, torch.randn(2, 3, 8, 8))
    # cell 0 normal (2 * 4), cells 1, 2 reduce (4 * 8, 4 * 16)
    assert [s[1] for s in shapes] == [8, 32, 64]


# ------------------------------------------------------------------ space API and registry


def test_space_ops_official_order(space):
    assert tuple(space.ops) == OFFICIAL_OPS
    assert tuple(nasplat.DARTS_OPS) == OFFICIAL_OPS


def test_space_types(space):
    assert isinstance(space, DartsSpace) and isinstance(space, SearchSpace)
    assert space.name == "darts"
    assert space.genotype_type is DartsGenotype
    assert "darts" in nasplat.available_spaces()
    assert isinstance(space.supernet(num_classes=2, C=4, layers=3), DartsSupernet)
    assert isinstance(space.supernet(num_classes=2, C=4, layers=3), nasplat.Supernet)
    assert isinstance(space.build(DARTS_V2, num_classes=2, C=4, layers=3), DartsNetwork)


@dataclasses.dataclass(frozen=True)
class _OtherGenotype(Genotype):
    space: ClassVar[str] = "other_space_for_tests"
    version: ClassVar[int] = 1
    depth: int = 3


def test_build_rejects_genotype_of_another_space(space):
    with pytest.raises(TypeError) as info:
        space.build(_OtherGenotype(), num_classes=3)
    assert "other_space_for_tests" in str(info.value)


def test_build_rejects_a_plain_dict_with_type_error(space):
    """A JSON dict is not a genotype: expect the TypeError, not an AttributeError raised while
    formatting the message (darts.py build reads ``genotype.space``). Fails until fixed."""
    with pytest.raises(TypeError):
        space.build(DARTS_V2.to_dict(), num_classes=3)


def test_unknown_space_lists_registered(space):
    with pytest.raises(UnknownSpaceError) as info:
        get_space("nope")
    assert isinstance(info.value, KeyError)
    assert "darts" in str(info.value)
    assert "nope" in str(info.value)


@pytest.fixture
def clean_spaces():
    saved = dict(space_module._REGISTRY)
    yield
    space_module._REGISTRY.clear()
    space_module._REGISTRY.update(saved)


def _dummy_space(space_name, genotype_type):
    class _Dummy(SearchSpace):
        name = space_name
        ops = ("skip_connect",)

        def supernet(self, num_classes, **options):
            raise NotImplementedError

        def decode(self, arch):
            raise NotImplementedError

        def build(self, genotype, num_classes, **options):
            raise NotImplementedError

    _Dummy.genotype_type = genotype_type
    return _Dummy


def test_registering_second_class_under_existing_name_raises(clean_spaces):
    original = get_space("darts")
    impostor = _dummy_space("darts", DartsGenotype)
    with pytest.raises(ValueError):
        register_space(impostor)
    with pytest.raises(ValueError):
        register_space(name="darts")(_dummy_space("whatever", DartsGenotype))
    assert get_space("darts") is original


def test_registering_a_new_space(clean_spaces):
    cls = _dummy_space("other_space_for_tests", _OtherGenotype)
    assert register_space(cls) is cls
    assert isinstance(get_space("other_space_for_tests"), cls)
    assert "other_space_for_tests" in nasplat.available_spaces()
    # a genotype of that space now round-trips through the generic loader
    g = nasplat.genotype_from_dict({"space": "other_space_for_tests", "version": 1, "depth": 5})
    assert g == _OtherGenotype(depth=5)
    # and the darts space still refuses it
    with pytest.raises(TypeError):
        get_space("darts").build(g, num_classes=3)
