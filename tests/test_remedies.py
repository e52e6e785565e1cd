"""Collapse remedies (nasplat.searching.remedies): penalties against analytic gradients, the schedules written
out, SDARTS noise seen by the weight step only, every registered space, and bad options refused by name."""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import nasplat
from nasplat import BilevelOptimizer
from nasplat.searching.remedies import Remedies, beta_decay_loss, build_remedies, mean_entropy
from nasplat.searching.remedy_options import REMEDY_OPTIONS
from nasplat.spaces.registry import available_spaces, get_space
from nasplat.training.config import ConfigError
from pipelines import cli

ROOT = Path(__file__).resolve().parents[1]


def _arch() -> list[torch.Tensor]:
    """Two tensors of different shapes and row lengths (5 rows in all), as a space might have."""
    return [torch.randn(3, 4, dtype=torch.float64), torch.randn(2, 1, 3, dtype=torch.float64)]


def _rows(arch: list[torch.Tensor]) -> list[torch.Tensor]:
    return [row for t in arch for row in t.reshape(-1, t.shape[-1])]


def _remedies(epoch: int, epochs: int, **chosen: dict) -> Remedies:
    remedies = Remedies({name: {**REMEDY_OPTIONS[name], **values} for name, values in chosen.items()})
    remedies.set_epoch(epoch, epochs)
    return remedies


def _penalty_gradient(remedies: Remedies, arch: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """The gradient of ``remedies.penalty`` for each tensor of ``arch`` (the caller's tensors left alone)."""
    leaves = [t.detach().requires_grad_(True) for t in arch]
    penalty = remedies.penalty(leaves)
    if penalty is None:
        return None
    return list(torch.autograd.grad(penalty, leaves, allow_unused=True, materialize_grads=True))


def test_beta_decay_is_the_mean_log_sum_exp_and_its_gradient_the_softmax():
    arch = _arch()
    rows = _rows(arch)
    assert beta_decay_loss(arch).item() == pytest.approx(sum(math.log(row.exp().sum()) for row in rows) / 5)
    remedies = _remedies(3, 10, beta_decay={"beta_weight": 20.0})  # weight 20 * 3/10 = 6
    grads = _penalty_gradient(remedies, arch)
    for tensor, grad in zip(arch, grads):
        expected = 6.0 * torch.softmax(tensor, dim=-1) / 5  # d/d alpha_k of logsumexp(row) = softmax_k
        torch.testing.assert_close(grad, expected)
    assert all(not t.requires_grad for t in arch)  # the caller's tensors are left alone


def test_entropy_penalty_gradient_is_analytic():
    arch = _arch()
    remedies = _remedies(4, 5, entropy={"entropy_weight": 2.0})  # last epoch: the full weight
    for tensor, grad in zip(arch, _penalty_gradient(remedies, arch)):
        p = torch.softmax(tensor, dim=-1)
        entropy = -(p * p.log()).sum(-1, keepdim=True)
        torch.testing.assert_close(grad, 2.0 * -p * (p.log() + entropy) / 5)
    uniform = [torch.zeros(2, 8)]
    assert mean_entropy(uniform).item() == pytest.approx(math.log(8))


def test_schedules_written_out():
    remedies = Remedies({"sdarts": {"epsilon_min": 0.03, "epsilon_max": 0.3}, "beta_decay": {"beta_weight": 50.0},
                         "entropy": {"entropy_weight": 1.0, "entropy_start": 0.5}})
    seen = []
    for epoch in range(4):
        remedies.set_epoch(epoch, 4)
        seen.append(remedies.schedule())
    # SDARTS: 0.03 + (0.3 - 0.03) * epoch / epochs; beta-DARTS: 50 * epoch / epochs (both from 0, as the authors')
    assert [s["remedy_epsilon"] for s in seen] == pytest.approx([0.03, 0.0975, 0.165, 0.2325])
    assert [s["remedy_beta_weight"] for s in seen] == pytest.approx([0.0, 12.5, 25.0, 37.5])
    # entropy: 0 up to half the search (epoch / (epochs - 1) = 0, 1/3), then linear to 1 at the last epoch
    assert [s["remedy_entropy_weight"] for s in seen] == pytest.approx([0.0, 0.0, 1 / 3, 1.0])
    remedies.set_epoch(0, 4)
    assert remedies.penalty(_arch()) is None and _penalty_gradient(remedies, _arch()) is None  # both weights are 0


class _Recording(nasplat.Supernet):
    """Stem, two mixed edges, head; records the arch tensor each forward pass sees."""

    OPS = ("none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3")

    def __init__(self, C: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.edges = nn.ModuleList(nasplat.MixedOp(C, 1, self.OPS) for _ in range(2))
        self.head = nn.Conv2d(C, num_classes, 1)
        self.add_arch_parameter("alpha", 0.1 * torch.randn(2, len(self.OPS)))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.arch["alpha"].detach().clone())
        x = self.stem(x)
        for edge, w in zip(self.edges, torch.softmax(self.arch["alpha"], dim=-1)):
            x = edge(x, w)
        return self.head(x)


def _optimizer(model: nasplat.Supernet, remedies: Remedies | None, arch_sgd: bool = False) -> BilevelOptimizer:
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    arch = list(model.arch_parameters().values())
    a_opt = torch.optim.SGD(arch, lr=0.5) if arch_sgd else torch.optim.Adam(arch, lr=3e-2)
    return BilevelOptimizer(model, w_opt, a_opt, nn.CrossEntropyLoss(), order=1, grad_clip=None, remedies=remedies)


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 8, 8, generator=generator), torch.randint(0, 3, (4, 8, 8), generator=generator)


def test_sdarts_noise_is_bounded_seen_by_the_weight_step_and_removed_after():
    model = _Recording()
    reference = copy.deepcopy(model)
    remedies = _remedies(1, 2, sdarts={"epsilon_min": 0.1, "epsilon_max": 0.5})  # eps = 0.1 + 0.4 / 2 = 0.3
    before = model.arch["alpha"].detach().clone()
    _optimizer(model, remedies).weight_step(_batch(0))
    assert torch.equal(model.arch["alpha"], before)  # restored exactly
    (seen,) = model.seen
    noise = seen - before
    assert noise.abs().max() <= 0.3 and noise.abs().max() > 0.1 and noise.min() < 0 < noise.max()
    # the weights were trained at the perturbed architecture: a plain step there gives the same weights
    with torch.no_grad():
        reference.arch["alpha"].copy_(seen)
    _optimizer(reference, None).weight_step(_batch(0))
    for got, want in zip(model.weight_parameters(), reference.weight_parameters()):
        torch.testing.assert_close(got, want)


def test_sdarts_leaves_the_arch_step_alone():
    noisy = _Recording()
    plain = copy.deepcopy(noisy)
    remedies = _remedies(1, 2, sdarts={"epsilon_max": 0.5})
    _optimizer(noisy, remedies).arch_step(_batch(0), _batch(1))
    _optimizer(plain, None).arch_step(_batch(0), _batch(1))
    assert torch.equal(noisy.seen[0], plain.seen[0])  # the arch step's forward saw the unperturbed alpha
    assert torch.equal(noisy.arch["alpha"], plain.arch["alpha"])


def test_arch_step_adds_the_penalty_gradient():
    model = _Recording()
    remedies = _remedies(2, 4, beta_decay={}, entropy={})
    bilevel = _optimizer(model, remedies, arch_sgd=True)
    alpha = model.arch["alpha"].detach().clone()
    (val_grad,), _ = bilevel.architecture_gradient(_batch(0), _batch(1))
    (penalty_grad,) = _penalty_gradient(remedies, [alpha])
    bilevel.arch_step(_batch(0), _batch(1))
    torch.testing.assert_close(model.arch["alpha"].detach(), alpha - 0.5 * (val_grad + penalty_grad))
    assert penalty_grad.abs().max() > 0.1 * val_grad.abs().max()  # the comparison can tell them apart


SPACES = [*available_spaces(), f"{ROOT / 'examples' / 'custom_space.py'}:chain"]
SMALL = {"autodeeplab": {"L": 2, "B": 2, "F": 2}}
"""Options that make a supernet quick to build (the others are built at their defaults)."""


@pytest.mark.parametrize("spec", SPACES)
def test_remedies_work_on_any_space(spec):
    """They see only the arch tensors: every space's supernet, whatever its tensors' shapes."""
    arch = list(get_space(spec).supernet(num_classes=3, **SMALL.get(spec, {})).arch_parameters().values())
    before = [t.detach().clone() for t in arch]
    remedies = build_remedies(["sdarts", "beta_decay", "entropy"], {})
    remedies.set_epoch(5, 10)
    grads = _penalty_gradient(remedies, arch)
    assert [g.shape for g in grads] == [t.shape for t in arch]
    assert all(torch.isfinite(g).all() and g.abs().max() > 0 for g in grads)
    with remedies.perturbed(arch):
        moved = [(t.detach() - b).abs().max().item() for t, b in zip(arch, before)]
    assert all(0 < m <= remedies.schedule()["remedy_epsilon"] for m in moved)
    assert all(torch.equal(t, b) for t, b in zip(arch, before))


def test_a_search_step_with_every_remedy_on_a_user_space():
    model = get_space(f"{ROOT / 'examples' / 'custom_space.py'}:chain").supernet(num_classes=3, C=4, depth=2)
    remedies = build_remedies(["sdarts", "beta_decay", "entropy"], {"entropy_start": 0.0})
    remedies.set_epoch(3, 4)
    before = model.arch["alpha"].detach().clone()
    stats = _optimizer(model, remedies).step(_batch(0), _batch(1))
    assert math.isfinite(stats["train_loss"]) and math.isfinite(stats["arch_loss"])
    assert not torch.equal(model.arch["alpha"], before)


BAD = {
    # argv after `search`: the words the error must hold
    ("--remedy", "smooth"): ["invalid choice", "'smooth'"],
    ("--remedy", "none", "sdarts"): ["'remedy'", "'none' alone"],
    ("--remedy", "entropy", "entropy"): ["'remedy'", "each remedy once"],
    ("--remedy", "entropy", "--remedy-option", "beta_weight=3"): ["'beta_weight'", "'beta_decay', which is not chosen"],
    ("--remedy", "none", "--remedy-option", "entropy_weight=1"): ["'entropy_weight'", "no remedy is chosen"],
    ("--remedy", "sdarts", "--remedy-option", "epsilon=0.1"): ["'epsilon' is unknown", "epsilon_min"],
    ("--remedy", "entropy", "--remedy-option", "entropy_start=1.5"): ["entropy_start", "[0, 1)", "1.5"],
    ("--remedy", "beta_decay", "--remedy-option", "beta_weight=-2"): ["beta_weight", ">= 0", "-2"],
    ("--remedy", "sdarts", "--remedy-option", "epsilon_min=0.5"): ["epsilon_min (0.5)", "epsilon_max (0.3)"],
    ("--remedy", "skip_dropout", "--remedy-option", "skip_dropout_rate=1"): ["skip_dropout_rate", "[0, 1)", "1"],
    ("--remedy", "entropy", "--remedy-option", "aux_skip_weight=2"): ["'aux_skip_weight'", "'darts_minus'"],
    ("--remedy", "sgas", "--remedy-option", "sgas_start=0.6", "--remedy-option", "sgas_post=0.5"): [
        "sgas_start (0.6) + sgas_post (0.5)", "sum < 1"],
}


@pytest.mark.parametrize("argv", sorted(BAD), ids=" ".join)
def test_bad_remedy_flags_are_refused_by_name(argv, capsys):
    try:
        status = cli.main(["search", *argv, "--print-config"])
    except SystemExit as exit_:  # argparse refuses a choice itself
        status = exit_.code
    captured = capsys.readouterr()
    assert status == 2 and not captured.out, captured
    assert all(word in captured.err for word in BAD[argv]), captured.err


def test_remedy_flags_reach_the_config(capsys):
    assert cli.main(["search", "--remedy", "sdarts", "entropy", "--remedy-option", "entropy_start=0.25",
                     "--remedy-option", "epsilon_max=0.2", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "remedy:\n- sdarts\n- entropy\n" in printed, printed
    assert "entropy_start: 0.25" in printed and "epsilon_max: 0.2" in printed, printed
    with pytest.raises(ConfigError, match="'remedy' must be a list"):
        build_remedies("entropy", {})


def test_auxiliary_skip_of_a_mixed_op_is_beta_times_its_input_on_stride_1_only():
    torch.manual_seed(0)
    x, weights = torch.randn(2, 4, 8, 8), torch.softmax(torch.randn(len(nasplat.DARTS_OPS)), -1)
    for stride in (1, 2):
        edge = nasplat.MixedOp(4, stride, nasplat.DARTS_OPS).eval()
        plain = edge(x, weights)
        edge.auxiliary_skip = 0.7
        assert torch.allclose(edge(x, weights), plain + 0.7 * x if stride == 1 else plain, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_darts_minus_in_a_cell_adds_beta_times_each_stride_1_input(fused):
    """Node 0 gets 0.7 * (both inputs) in a normal cell and nothing more in a reduction cell; every node equals
    the sum of its edges' own forward (with their auxiliary skips), on the grouped path too."""
    torch.manual_seed(0)
    edges = nasplat.cell_edges(3)
    for stride in (1, 2):
        cell = nasplat.MixedCell(4, 3, nasplat.DARTS_OPS, input_stride=stride, fused=fused).eval()
        inputs = [torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)]
        weights = torch.softmax(torch.randn(len(edges), len(nasplat.DARTS_OPS)), -1)
        plain = cell(inputs, weights)
        for edge in cell.edges:
            edge.auxiliary_skip = 0.7
        states = cell(inputs, weights)
        extra = 0.7 * (inputs[0] + inputs[1]) if stride == 1 else 0
        assert torch.allclose(states[2], plain[2] + extra, atol=1e-5)
        for node in range(3):
            total = sum(cell.edges[e](states[source], weights[e])
                        for e, (n, source) in enumerate(edges) if n == node)
            assert torch.allclose(states[2 + node], total, atol=1e-5)


def test_darts_minus_schedule_decays_to_zero_and_reaches_every_stride_1_edge():
    model = get_space("darts").supernet(num_classes=3, C=4, layers=3)
    remedies = build_remedies(["darts_minus"], {"aux_skip_weight": 0.8})
    remedies.attach(model)
    edges = [m for m in model.modules() if isinstance(m, nasplat.MixedOp)]
    seen = []
    for epoch in range(5):
        remedies.set_epoch(epoch, 5)
        seen.append(remedies.schedule()["remedy_aux_skip"])
        assert [e.auxiliary_skip for e in edges if e.stride == 1] == [seen[-1]] * (14 + 2 * 6)
        # layers=3: one normal cell (14 edges) and two reduction cells (6 edges between nodes each)
        assert {e.auxiliary_skip for e in edges if e.stride == 2} == {0.0}
    assert seen == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0])  # linear, 0 at the last epoch
    assert remedies.penalty(_arch()) is None  # no loss term: it acts on the supernet only


def test_darts_minus_on_a_user_space_and_said_idle_without_mixed_ops():
    model = get_space(f"{ROOT / 'examples' / 'custom_space.py'}:chain").supernet(num_classes=3, C=4, depth=2)
    remedies = build_remedies(["darts_minus", "entropy"], {})
    assert remedies.attach(model) == []
    remedies.set_epoch(0, 4)
    stats = _optimizer(model, remedies).step(_batch(0), _batch(1))
    assert math.isfinite(stats["train_loss"]) and all(e.auxiliary_skip == 1.0 for e in model.chain.links)
    assert build_remedies(["darts_minus", "entropy"], {}).attach(_Plain()) == [
        "remedy 'darts_minus' does nothing here: _Plain has no stride-1 nasplat.MixedOp edges"]


class _Plain(nasplat.Supernet):
    """A supernet without MixedOp edges."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)
        self.add_arch_parameter("alpha", torch.zeros(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.softmax(self.arch["alpha"], -1)[0, 0]


@pytest.mark.parametrize("fused", [True, False])
def test_skip_dropout_drops_each_skip_edge_independently_in_training_only(fused):
    """P-DARTS's dropout on skip connections: with every edge on skip_connect and both inputs all ones, node 0 is
    the sum of two independently dropped copies (values 0, 2, 4 at p=0.5, about 1/4, 1/2, 1/4 of the pixels; one
    shared mask would give only 0 and 4); in eval mode nothing is dropped."""
    torch.manual_seed(0)
    edges = nasplat.cell_edges(2)
    cell = nasplat.MixedCell(4, 2, nasplat.DARTS_OPS, fused=fused)
    remedies = build_remedies(["skip_dropout"], {"skip_dropout_rate": 0.5})
    remedies.attach(cell)
    remedies.set_epoch(0, 3)
    weights = torch.zeros(len(edges), len(nasplat.DARTS_OPS))
    weights[:, nasplat.DARTS_OPS.index("skip_connect")] = 1.0
    inputs = [torch.ones(4, 4, 32, 32), torch.ones(4, 4, 32, 32)]
    node0 = cell.train()(inputs, weights)[2]
    shares = [(node0 == value).float().mean().item() for value in (0.0, 2.0, 4.0)]
    assert sum(shares) == pytest.approx(1.0)
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.03)
    assert torch.equal(cell.eval()(inputs, weights)[2], torch.full_like(node0, 2.0))
    with remedies.without_dropout():  # e.g. for the Hessian: the same function at every evaluation
        assert torch.equal(cell.train()(inputs, weights)[2], torch.full_like(node0, 2.0))
    assert {skip.dropout for skip in remedies.skips} == {0.5}  # restored
    remedies.set_epoch(2, 3)  # the rate decays to 0 at the last epoch
    assert remedies.schedule()["remedy_skip_dropout"] == 0.0
    assert torch.equal(cell.train()(inputs, weights)[2], torch.full_like(node0, 2.0))


def test_skip_dropout_schedule_and_idle_without_skip_candidates():
    remedies = build_remedies(["skip_dropout"], {})
    seen = []
    for epoch in range(5):
        remedies.set_epoch(epoch, 5)
        seen.append(remedies.schedule()["remedy_skip_dropout"])
    assert seen == pytest.approx([0.7, 0.525, 0.35, 0.175, 0.0])  # the default rate 0.7, linear to 0
    assert remedies.attach(_Plain()) == ["remedy 'skip_dropout' does nothing here: _Plain has no stride-1 "
                                         "'skip_connect' candidates in nasplat.MixedOp edges"]
    assert remedies.attach(get_space("darts").supernet(num_classes=3, C=4, layers=3)) == []


@dataclasses.dataclass(frozen=True)
class _PlainGenotype(nasplat.Genotype):
    space = "test_plain_conv"
    choice: int = 0


@nasplat.register_space
class _PlainSpace(nasplat.SearchSpace):
    """A search-only space around :class:`_Plain`: no MixedOp edges, no skip connections."""

    name = "test_plain_conv"
    ops = ("a", "b")
    genotype_type = _PlainGenotype

    def supernet(self, num_classes: int, **options) -> _Plain:
        return _Plain(num_classes)

    def decode(self, arch, **options) -> _PlainGenotype:
        return _PlainGenotype(choice=int(arch["alpha"].argmax()))

    def build(self, genotype, num_classes: int, **options) -> nn.Module:
        raise NotImplementedError("search-only test space")


def test_a_search_says_once_that_a_supernet_remedy_has_nothing_to_act_on(capsys):
    from nasplat.searching.config import SearchConfig
    from nasplat.searching.loop import SupernetSearch

    SupernetSearch(SearchConfig(space="test_plain_conv", image_size=16, train_samples=8, val_samples=4, batch_size=2,
                                workers=1, epochs=2, remedy=["skip_dropout", "entropy", "sgas"]))
    printed = capsys.readouterr().out.splitlines()
    assert printed.count("[nasplat] warning: remedy 'skip_dropout' does nothing here: _Plain has no stride-1 "
                         "'skip_connect' candidates in nasplat.MixedOp edges") == 1, printed
    assert printed.count("[nasplat] warning: remedy 'sgas' does nothing here: _Plain has no cells to decide "
                         "(Supernet.decision_cells)") == 1, printed
