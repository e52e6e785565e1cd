"""Cost-aware search (--cost): the expected cost against hand sums and path enumeration, the per-op FLOPs and
parameters against a hand count and the built networks' own ops, the penalty, the table checks, and the issue's
test: on the same seed a higher --cost-weight gives a cheaper decoded genotype."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import nasplat
from nasplat.searching.config import SearchConfig
from nasplat.searching.cost import OpShape, cell_op_shapes, expected_cell_cost, keep_weights
from nasplat.searching.cost_search import CostObjective, check_cost, cost_model_of, resolve_costs
from nasplat.searching.cost_table import counted_costs, load_table, save_table
from nasplat.searching.loop import SupernetSearch
from nasplat.spaces.cells import DiscreteCell, cell_edges
from nasplat.training.config import ConfigError
from nasplat.training.model_stats import count_flops, count_parameters
from pipelines.cli import main as cli_main

TINY = dict(image_size=16, train_samples=8, val_samples=4, batch_size=2, workers=1,
            space_options={"C": 2, "layers": 2, "reductions": 1})


def test_expected_cell_cost_is_the_hand_computed_softmax_weighted_sum():
    ops = ("none", "a", "b", "c")
    num_nodes = 2  # edges: node 0 <- 0, 1; node 1 <- 0, 1, 2
    generator = torch.Generator().manual_seed(3)
    alpha = torch.randn(5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    costs = torch.rand(5, 4, generator=generator, dtype=torch.float64) + 0.5
    keep = [1.0, 1.0, 2 / 3, 2 / 3, 2 / 3]  # a node keeps 2 of its 2 or 3 inputs
    hand = 0.0
    for e in range(5):
        row = [math.exp(float(alpha[e, o].detach())) for o in (1, 2, 3)]  # 'none' is never kept: left out
        hand += keep[e] * sum(p / sum(row) * float(costs[e, o]) for p, o in zip(row, (1, 2, 3)))
    value = expected_cell_cost(alpha, costs, ops, num_nodes)
    assert float(value.detach()) == pytest.approx(hand, rel=1e-12)
    assert keep_weights(num_nodes).tolist() == pytest.approx(keep)
    assert torch.autograd.gradcheck(lambda a: expected_cell_cost(a, costs, ops, num_nodes), (alpha,))
    value.backward()
    assert float(alpha.grad[:, 0].abs().max()) == 0.0  # 'none' takes no cost gradient
    # a near one-hot row costs that op's cost
    sharp = torch.full((5, 4), -50.0, dtype=torch.float64)
    sharp[:, 2] = 50.0
    assert float(expected_cell_cost(sharp, costs, ops, num_nodes)) == pytest.approx(
        sum(k * float(costs[e, 2]) for e, k in enumerate(keep)))


def test_autodeeplab_expected_cost_is_the_expectation_over_enumerated_paths():
    space = nasplat.get_space("autodeeplab")
    from search_spaces.autodeeplab.paths import NUM_LEVELS, normalized_beta

    model = space.cost_model(32, F=2, L=3, B=2)
    costs = {shape: 1.0 + 0.37 * index for index, shape in enumerate(model.op_shapes())}  # any distinct costs
    generator = torch.Generator().manual_seed(0)
    arch = {"alpha": torch.randn(5, len(space.ops), generator=generator, dtype=torch.float64),
            "beta": torch.randn(3, NUM_LEVELS, 3, generator=generator, dtype=torch.float64, requires_grad=True)}
    moves = normalized_beta(arch["beta"].detach(), "paper")
    cell = {}
    for move in model.moves:
        channels, size, stride = model._cell_input(move)
        grid = cell_op_shapes(space.ops, 2, channels, size, stride)
        matrix = torch.tensor([[0.0 if s is None else costs[s] for s in row] for row in grid], dtype=torch.float64)
        cell[move] = float(expected_cell_cost(arch["alpha"], matrix, space.ops, 2))
    total = 0.0
    for levels in itertools.product(range(NUM_LEVELS), repeat=3):  # every path, impossible ones weigh 0
        probability, cost, source = 1.0, 0.0, 0
        for layer, target in enumerate(levels):
            if abs(target - source) > 1:
                probability = 0.0
                break
            probability *= float(moves[layer, source, target - source + 1])
            cost += cell[(source, target)]
            source = target
        total += probability * cost
    value = model.expected(arch, costs)
    assert float(value.detach()) == pytest.approx(total, rel=1e-9)
    value.backward()
    assert arch["beta"].grad is not None and float(arch["beta"].grad.abs().sum()) > 0


def test_sep_conv_flops_and_params_match_a_hand_count():
    # two (ReLU, depthwise 3x3, pointwise 1x1, BN) units at C=4 on 8x8, stride 1
    C, H = 4, 8
    counted = counted_costs(OpShape("sep_conv_3x3", C, 1, H, H))
    assert counted["params"] == 2 * (9 * C + C * C + 2 * C)
    assert counted["gflops"] * 1e9 == pytest.approx(2 * (2 * 9 * C * H * H + 2 * C * C * H * H))
    # stride 2: the first depthwise conv and everything after it run at 4x4
    strided = counted_costs(OpShape("sep_conv_3x3", C, 2, H, H))
    assert strided["gflops"] * 1e9 == pytest.approx(2 * (2 * 9 * C * 16 + 2 * C * C * 16))
    assert counted_costs(OpShape("skip_connect", C, 1, H, H)) == {"gflops": 0.0, "params": 0.0}


def _cell_op_costs(network: torch.nn.Module, image_size: int) -> tuple[float, float]:
    """FLOPs and parameters of every op inside the network's discrete cells, counted at the inputs they get."""
    inputs: dict[torch.nn.Module, tuple[int, ...]] = {}
    ops = [op for cell in network.modules() if isinstance(cell, DiscreteCell) for op in cell.edges]

    def record(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        inputs[module] = tuple(args[0].shape)

    hooks = [op.register_forward_hook(record) for op in ops]
    network.eval()
    with torch.no_grad():
        network(torch.zeros(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    assert len(inputs) == len(ops)
    return (sum(count_flops(op, inputs[op]) for op in ops) / 1e9, float(sum(count_parameters(op) for op in ops)))


@pytest.mark.parametrize("space_name, image_size, options, seed", [
    ("darts", 20, {"C": 2, "layers": 4, "reductions": 2}, 1),
    ("autodeeplab", 33, {"F": 2, "L": 4, "B": 2}, 2),
])
def test_genotype_cost_is_the_cost_of_the_built_networks_cell_ops(space_name, image_size, options, seed):
    space = nasplat.get_space(space_name)
    model = space.cost_model(image_size, **options)
    costs = {shape: counted_costs(shape) for shape in model.op_shapes()}
    sample_options = {k: v for k, v in options.items() if k in ("L", "B")}
    genotype = space.sample(seed, **sample_options)
    flops, params = _cell_op_costs(space.build(genotype, 3, **model.build_options), image_size)
    assert model.genotype_cost(genotype, {s: c["gflops"] for s, c in costs.items()}) == pytest.approx(flops)
    assert model.genotype_cost(genotype, {s: c["params"] for s, c in costs.items()}) == params


def test_penalty_is_relative_without_target_and_a_hinge_with_one():
    search_config = SearchConfig(**TINY, cost="params", cost_weight=2.0)
    space = nasplat.get_space("darts")
    zeros = {"normal": torch.zeros(14, 8), "reduce": torch.zeros(14, 8)}
    objective = CostObjective(search_config, space, zeros)
    assert float(objective.penalty(zeros)) == pytest.approx(2.0)  # W * E_0 / E_0
    cheap = {name: value.clone() for name, value in zeros.items()}
    for name in cheap:
        cheap[name][:, space.ops.index("max_pool_3x3")] = 20.0  # pooling has no parameters
    assert float(objective.expected(cheap)) < 0.01 * objective.reference
    target = CostObjective(search_config.replace(cost_target=objective.reference / 2), space, zeros)
    assert float(target.penalty(zeros)) == pytest.approx(2.0 * (2 - 1))
    assert float(target.penalty(cheap)) == 0.0


def test_a_higher_cost_weight_lowers_the_decoded_genotypes_cost():
    """The issue's test: same seed, same data, only --cost-weight differs."""
    costs = {}
    for weight in (0.0, 3.0):
        search = SupernetSearch(SearchConfig(**TINY, epochs=3, cost="flops", cost_weight=weight, arch_lr=0.05))
        for _ in range(3):
            search.train_epoch()
        metrics = search.cost_metrics(search.genotype())
        assert set(metrics) == {"expected_cost", "cost_penalty", "genotype_cost"}
        costs[weight] = metrics
    assert costs[0.0]["cost_penalty"] == 0.0
    assert costs[3.0]["genotype_cost"] < 0.5 * costs[0.0]["genotype_cost"]
    assert costs[3.0]["expected_cost"] < costs[0.0]["expected_cost"]


@pytest.mark.parametrize("space_name", ["darts", "autodeeplab"])
def test_the_cost_model_takes_every_supernet_option_nasplat_search_may_pass(space_name):
    """`nasplat search` adds the space's search defaults (DARTS: max_skip_normal) to the space options, and the
    PC-DARTS options change how the supernet runs, not the network: the cost model takes them all (a --cost search
    with the defaults was refused before)."""
    space = nasplat.get_space(space_name)
    small = TINY["space_options"] if space_name == "darts" else {"F": 2, "L": 2, "B": 1}
    config = SearchConfig(**{**TINY, "space_options": {**small, "partial_channels": 2, "edge_normalization": True}},
                          cost="flops").with_space_defaults(space.search_defaults)
    assert check_cost(config, space) == config
    assert cost_model_of(config, space).op_shapes() == cost_model_of(config.replace(space_options=small), space).op_shapes()


def _profile(tmp_path, image_size: int, space: str = "darts") -> str:
    out = tmp_path / f"table_{space}_{image_size}.json"
    options = [f"--space-option={k}={v}" for k, v in TINY["space_options"].items()] if space == "darts" else \
        ["--space-option=F=2", "--space-option=L=2", "--space-option=B=1"]
    status = cli_main(["profile-ops", "--space", space, "--image-size", str(image_size), "--out", str(out),
                       "--repeats", "1", "--warmup", "0", "--device", "cpu", *options])
    assert status == 0
    return str(out)


def test_profile_ops_writes_the_table_a_latency_search_reads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _profile(tmp_path, 16)
    table = load_table(path)
    config = SearchConfig(**TINY, cost="latency", cost_table="table_darts_16.json")
    space = nasplat.get_space("darts")
    model = cost_model_of(config, space)
    assert set(table.entries) == set(model.op_shapes())
    assert all(entry["latency_ms"] > 0 for entry in table.entries.values())
    assert table.meta["space"] == "darts" and table.meta["image_size"] == 16
    checked = check_cost(config, space)
    assert checked.cost_table == path  # made absolute for the workers
    latency = resolve_costs(checked, space, model)
    assert latency == {shape: entry["latency_ms"] for shape, entry in table.entries.items()}


def test_a_table_that_does_not_fit_the_search_is_refused_naming_the_field(tmp_path):
    space = nasplat.get_space("darts")
    path = _profile(tmp_path, 16)
    with pytest.raises(ConfigError, match=r"'cost_table'.*image size 16.*lacks \d+ op shape.*image size 32"):
        check_cost(SearchConfig(**{**TINY, "image_size": 32}, cost="latency", cost_table=path), space)
    wider = {**TINY, "space_options": {**TINY["space_options"], "C": 4}}
    with pytest.raises(ConfigError, match=r"'cost_table'.*profile with the same settings"):
        check_cost(SearchConfig(**wider, cost="latency", cost_table=path), space)
    other = tmp_path / "other.json"
    data = json.loads(open(path).read())
    data["space"] = "autodeeplab"
    other.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"measured for space 'autodeeplab', not 'darts'"):
        check_cost(SearchConfig(**TINY, cost="latency", cost_table=str(other)), space)
    with pytest.raises(ConfigError, match=r"'cost_table' is needed for cost latency.*profile-ops"):
        SearchConfig(**TINY, cost="latency")
    with pytest.raises(ConfigError, match=r"cost table not found.*profile-ops"):
        check_cost(SearchConfig(**TINY, cost="latency", cost_table=str(tmp_path / "missing.json")), space)


def test_saved_tables_round_trip_and_bad_entries_name_the_file(tmp_path):
    shape = OpShape("sep_conv_3x3", 4, 2, 9, 9)
    assert OpShape.from_key(shape.key) == shape
    path = save_table(tmp_path / "t.json", {shape: {"latency_ms": 1.5, "gflops": 0.1, "params": 3.0}},
                      {"space": "darts"})
    assert load_table(path).costs("latency_ms") == {shape: 1.5}
    data = json.loads(path.read_text())
    data["entries"][shape.key]["latency_ms"] = -1
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"t\.json: entry sep_conv_3x3\|C=4\|stride=2\|9x9 must map"):
        load_table(path)
    data["entries"][shape.key]["latency_ms"] = True  # JSON true is no latency
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="must map metric names to numbers"):
        load_table(path)


def test_profile_ops_warns_when_the_timings_are_noisy(tmp_path, monkeypatch, capsys):
    import nasplat.searching.cost_table as cost_table

    def busy_machine(op, input_size, warmup, repeats):
        return {"median_ms": 1.0, "iqr_ms": 0.8}  # e.g. other processes on the same cores

    monkeypatch.setattr(cost_table, "measure_latency", busy_machine)
    _profile(tmp_path, 16)
    assert "warning: 21 of 21 ops timed with an interquartile range above 50% of their median" in \
        capsys.readouterr().err


def test_darts_expected_cost_at_uniform_alpha_is_the_hand_sum_over_every_cell():
    """Every cell of the layout counts (normal cells share one alpha, and so do reduction cells): at uniform alpha
    an edge costs the mean of its 7 non-`none` ops, times the share 2 / fan-in of edges its node keeps."""
    space = nasplat.get_space("darts")
    model = space.cost_model(16, C=4, layers=4, reductions=2)
    costs = {shape: float(index + 1) for index, shape in enumerate(model.op_shapes())}
    ops = [k for k, name in enumerate(space.ops) if name != "none"]
    hand = 0.0
    for channels, size, reduction in model.cells:
        grid = cell_op_shapes(space.ops, 4, channels, size, 2 if reduction else 1)
        for (node, _), row in zip(cell_edges(4), grid):
            hand += 2 / (2 + node) * sum(costs[row[k]] for k in ops) / len(ops)
    uniform = {name: torch.zeros(len(cell_edges(4)), len(space.ops), dtype=torch.float64)
               for name in ("normal", "reduce")}
    assert len(model.cells) == 4 and sum(red for _, _, red in model.cells) == 2
    assert float(model.expected(uniform, costs)) == pytest.approx(hand, rel=1e-12)


def test_edge_weights_set_each_edges_keep_chance_and_take_the_cost_gradient():
    """With PC-DARTS's edge normalisation a node keeps the inputs its edge weights favour: an edge's keep chance is
    min(1, 2 w_e), all of a node's inputs when it has only 2; uniform edge weights give the uniform 2 / fan-in."""
    # edges: node 0 <- 0, 1; node 1 <- 0, 1, 2
    weights = torch.tensor([0.3, 0.7, 0.6, 0.3, 0.1], dtype=torch.float64)
    assert keep_weights(2, edge_weights=weights).tolist() == pytest.approx([1.0, 1.0, 1.0, 0.6, 0.2])
    assert keep_weights(2, edge_weights=torch.tensor([0.5, 0.5, 1 / 3, 1 / 3, 1 / 3])).tolist() == pytest.approx(
        keep_weights(2).tolist())
    with pytest.raises(ValueError, match=r"edge_weights \(4,\) must be \[5\]"):
        keep_weights(2, edge_weights=torch.ones(4))
    ops, alpha = ("none", "a", "b"), torch.zeros(5, 3, dtype=torch.float64)
    costs = torch.ones(5, 3, dtype=torch.float64)
    costs[4] = 10.0  # node 1's input from node 0 is dear
    to_dear = torch.tensor([0.5, 0.5, 0.1, 0.1, 0.8], dtype=torch.float64)
    to_cheap = torch.tensor([0.5, 0.5, 0.8, 0.1, 0.1], dtype=torch.float64)
    dear, cheap = (float(expected_cell_cost(alpha, costs, ops, 2, edge_weights=w)) for w in (to_dear, to_cheap))
    assert dear == pytest.approx(1 + 1 + 0.2 + 0.2 + 10 * 1.0) and cheap == pytest.approx(1 + 1 + 1 + 0.2 + 10 * 0.2)

    space = nasplat.get_space("darts")
    model = space.cost_model(16, C=4, layers=3, reductions=1)
    table = {shape: float(index + 1) for index, shape in enumerate(model.op_shapes())}
    arch = {name: torch.randn(14, len(space.ops), dtype=torch.float64) for name in ("normal", "reduce")}
    without = float(model.expected(arch, table))
    edges = {f"{cell}_edges{node}": torch.zeros(2 + node, dtype=torch.float64, requires_grad=True)
             for cell in ("normal", "reduce") for node in range(4)}
    uniform = model.expected({**arch, **edges}, table)
    assert float(uniform) == pytest.approx(without, rel=1e-12)
    uniform.backward()
    assert float(edges["normal_edges3"].grad.abs().max()) > 0  # the edge weights take the cost gradient
