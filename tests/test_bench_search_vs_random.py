"""bench/search_vs_random.py's statistics: the flat-curve rule and the exact one-sided Mann-Whitney U."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from nasplat.spaces.registry import get_space

_PATH = Path(__file__).resolve().parents[1] / "bench" / "search_vs_random.py"
_SPEC = importlib.util.spec_from_file_location("search_vs_random", _PATH)
svr = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = svr  # dataclasses look their module up there
_SPEC.loader.exec_module(svr)


def _result(label: str, kind: str, values: list[float]) -> "svr.Result":
    candidate = svr.Candidate(label, kind, {}, label)
    return svr.Result(candidate, 1, [[0.1, 0.2, v, v] for v in values])


def test_last_quarter_rise_tells_rising_from_flat_curves():
    rising = [0.1 * i for i in range(1, 13)]  # +0.1 per epoch: the last 3 epochs rise by 0.2
    rise, flat = svr.last_quarter_rise(rising)
    assert rise == pytest.approx(0.2) and not flat
    noisy_plateau = [0.5] * 8 + [0.70, 0.74, 0.69, 0.73, 0.70, 0.72]
    rise, flat = svr.last_quarter_rise(noisy_plateau)  # last 3: 0.73, 0.70, 0.72 -> line rises by -0.01
    assert rise == pytest.approx(-0.01) and flat


def test_verdict_exact_mann_whitney_for_complete_separation():
    """3 searched genotypes above all 10 random ones: exact one-sided p = 1 / C(13, 3) = 1/286, U = 3 * 10."""
    searched = [_result(f"s{i}", "searched", [0.8 + 0.01 * i] * 2) for i in range(3)]
    randoms = [_result(f"r{i}", "random", [0.5 + 0.01 * i] * 2) for i in range(10)]
    lines = svr.verdict(searched + randoms)
    test_line = next(line for line in lines if "Mann-Whitney" in line)
    assert "U = 30.0" in test_line
    assert f"p = {1 / math.comb(13, 3):.4f}" in test_line
    assert sum("ranks 1 of 11" in line for line in lines) == 3


def test_random_candidates_are_what_sample_genotype_prints(tmp_path):
    """The random rows use the search's decode rules (DARTS: seed 12's draw capped from 3 skips to 2)."""
    darts = get_space("darts")
    path = tmp_path / "g.json"
    path.write_text(darts.sample(1).to_json())
    args = svr.parse_args(["--workdir", str(tmp_path), "--genotype", str(path), "--random", "13", "--baselines"])
    rows = svr.candidates(args, tmp_path)
    assert [r.kind for r in rows] == ["searched"] + ["random"] * 13
    assert rows[13].source["genotype"] == darts.sample(12, max_skip_normal=2).to_dict()
