"""Random genotypes: uniform over the space's choices, checked by counting with fixed seeds.

Every frequency check allows 5 binomial standard deviations around the uniform expectation
(a false alarm rate of about 6e-7 per category for a correct sampler); the seeds are fixed, so
the tests are deterministic.
"""
import collections
import itertools
import json
import math
import random

import pytest
import torch

import nasplat
from pipelines.cli import main
from search_spaces.autodeeplab import STRIDES, path_counts, sample_path, viterbi_path

FIVE_SIGMA = 5.0


def assert_uniform(counts: collections.Counter, categories: list, n: int, what: str) -> None:
    assert set(counts) <= set(categories), f"{what}: impossible outcomes {set(counts) - set(categories)}"
    p = 1.0 / len(categories)
    bound = FIVE_SIGMA * math.sqrt(n * p * (1 - p))
    for category in categories:
        assert abs(counts[category] - n * p) <= bound, (
            f"{what}: {category} drawn {counts[category]} times, expected {n * p:.0f} +- {bound:.0f}"
        )


def darts_samples(n: int, seed: int) -> list:
    space = nasplat.get_space("darts")
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(n)]


DARTS_OPS_KEPT = [op for op in nasplat.DARTS_OPS if op != "none"]  # the 7 ops a genotype may hold


def test_darts_sample_is_uniform_over_input_pairs_and_ops():
    n = 6000
    genotypes = darts_samples(n, seed=1234)
    for cell in ("normal", "reduce"):
        for node in range(4):
            fan_in = 2 + node
            pairs = [getattr(g, cell)[2 * node : 2 * node + 2] for g in genotypes]
            # ordered inputs (stronger edge first): each ordered pair of distinct inputs equally likely
            ordered = collections.Counter((a[1], b[1]) for a, b in pairs)
            assert_uniform(ordered, list(itertools.permutations(range(fan_in), 2)), n, f"{cell} node {node} inputs")
            for slot in (0, 1):
                ops = collections.Counter(pair[slot][0] for pair in pairs)
                assert_uniform(ops, DARTS_OPS_KEPT, n, f"{cell} node {node} op {slot}")
    # joint law of node 0 (inputs 0 and 1 in either order, two ops): 2 * 7 * 7 = 98 equally likely cells
    joint = collections.Counter((g.normal[0][1], g.normal[0][0], g.normal[1][0]) for g in genotypes)
    assert_uniform(joint, list(itertools.product((0, 1), DARTS_OPS_KEPT, DARTS_OPS_KEPT)), n, "normal node 0 joint")


def test_sample_is_reproducible_and_accepts_seed_or_rng():
    for name in ("darts", "autodeeplab"):
        space = nasplat.get_space(name)
        assert space.sample(7) == space.sample(random.Random(7))
        assert space.sample(7) != space.sample(8)
        rng = random.Random(3)
        first, second = space.sample(rng), space.sample(rng)
        assert first != second  # the generator advances


def valid_paths(layers: int) -> list[tuple[int, ...]]:
    """Brute force: strides 4..32, starting from the stride-4 stem, at most one level per layer (paper Fig. 1)."""
    paths = []
    for path in itertools.product(STRIDES, repeat=layers):
        levels = [0] + [STRIDES.index(s) for s in path]
        if all(abs(b - a) <= 1 for a, b in itertools.pairwise(levels)):
            paths.append(path)
    return paths


def test_path_counts_match_enumeration():
    for layers in range(1, 8):
        assert path_counts(layers)[0][0] == len(valid_paths(layers))
    # closed form: walks on the 4 levels from stride 4 count the odd Fibonacci numbers F(2L+1)
    fib = [0, 1]
    while len(fib) < 26:
        fib.append(fib[-1] + fib[-2])
    assert [path_counts(layers)[0][0] for layers in range(1, 13)] == [fib[2 * L + 1] for L in range(1, 13)]
    with pytest.raises(ValueError, match="layers"):
        path_counts(0)


def test_autodeeplab_path_uniform_over_valid_paths():
    layers = 4
    paths = valid_paths(layers)
    assert len(paths) == 34
    n = 200 * len(paths)
    rng = random.Random(99)
    counts = collections.Counter(tuple(sample_path(layers, rng)) for _ in range(n))
    assert_uniform(counts, paths, n, "path")
    # and through the space's sample(), with L passed as the supernet option
    space = nasplat.get_space("autodeeplab")
    rng = random.Random(5)
    genotypes = [space.sample(rng, L=layers) for _ in range(n)]
    assert_uniform(collections.Counter(g.path for g in genotypes), paths, n, "sample().path")
    # the cell: block 4 picks an ordered pair of its 6 inputs uniformly
    block4 = collections.Counter((g.cell[8][1], g.cell[9][1]) for g in genotypes)
    assert_uniform(block4, list(itertools.permutations(range(6), 2)), n, "cell block 4 inputs")


def test_viterbi_on_random_beta_is_not_uniform():
    """Why Auto-DeepLab overrides sample(): decoding random beta favours some paths."""
    layers, n = 3, 3900
    paths = valid_paths(layers)
    generator = torch.Generator().manual_seed(0)
    counts = collections.Counter(
        tuple(viterbi_path(torch.randn(layers, 4, 3, generator=generator, dtype=torch.float64)))
        for _ in range(n)
    )
    assert set(counts) <= set(paths)  # valid paths only: the failure below is about frequencies
    expected, bound = n / len(paths), FIVE_SIGMA * math.sqrt(n / len(paths) * (1 - 1 / len(paths)))
    assert max(abs(counts[path] - expected) for path in paths) > bound


def test_autodeeplab_sample_options():
    space = nasplat.get_space("autodeeplab")
    genotype = space.sample(0, L=6, B=3, beta_norm="boundary_scaled", F=4)
    assert len(genotype.path) == 6 and genotype.blocks == 3 and genotype.beta_norm == "boundary_scaled"
    with pytest.raises(TypeError, match="Lx"):
        space.sample(0, Lx=3)


def test_sampled_genotypes_build_networks():
    darts = nasplat.get_space("darts")
    net = darts.build(darts.sample(11), num_classes=3, C=4, layers=3, head_channels=8)
    assert net(torch.randn(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    adl = nasplat.get_space("autodeeplab")
    net = adl.build(adl.sample(11, L=3), num_classes=3, F=2, stem_channels=(8, 8, 16), aspp_channels=8,
                    decoder_channels=8, low_level_channels=4).eval()
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_cli_sample_genotype(tmp_path, capsys):
    out = tmp_path / "g.json"
    assert main(["sample-genotype", "--space", "darts", "--seed", "4", "--out", str(out)]) == 0
    written = nasplat.load_genotype(out)
    assert written == nasplat.get_space("darts").sample(4, max_skip_normal=2)
    assert main(["sample-genotype", "--space", "autodeeplab", "--seed", "4", "--space-option", "L=5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["space"] == "autodeeplab" and len(printed["path"]) == 5
    assert main(["sample-genotype", "--space", "nope"]) == 2
    assert "unknown search space 'nope'" in capsys.readouterr().err


def _normal_skips(genotype) -> int:
    return sum(op == "skip_connect" for op, _ in genotype.to_dict()["normal"])


def test_cli_samples_from_the_space_nasplat_search_decodes(tmp_path):
    """Seed 12's uniform draw has 3 skip_connect in the normal cell; `nasplat search` keeps at most 2 (the DARTS
    space's search default max_skip_normal=2), so sample-genotype draws under the same rule unless told otherwise."""
    darts = nasplat.get_space("darts")
    assert _normal_skips(darts.sample(12)) == 3
    capped, paper = tmp_path / "capped.json", tmp_path / "paper.json"
    assert main(["sample-genotype", "--space", "darts", "--seed", "12", "--out", str(capped)]) == 0
    assert _normal_skips(nasplat.load_genotype(capped)) == 2
    assert main(["sample-genotype", "--space", "darts", "--seed", "12", "--space-option", "max_skip_normal=null",
                 "--out", str(paper)]) == 0
    assert nasplat.load_genotype(paper) == darts.sample(12)
