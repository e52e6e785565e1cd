"""Network-level maths of Auto-DeepLab: levels, beta masks and normalisation, paths and Viterbi.

Levels 0..3 are output strides 4/8/16/32. ``beta[l, s, k]`` is the logit of the move out of the
level-``s`` node that feeds layer ``l`` (``k``: 0 finer, 1 same, 2 coarser; the NoamRosenberg
layout). Layer 0 is fed by the stem, which counts as the level-0 node. A path lists the output
stride of every layer; it starts from the stem and moves at most one level per layer.
"""
from __future__ import annotations

import itertools
import math
import random
from typing import Sequence

import torch

STRIDES: tuple[int, ...] = (4, 8, 16, 32)
"""Output stride of levels 0..3."""
NUM_LEVELS = len(STRIDES)
BETA_NORMS: tuple[str, ...] = ("paper", "boundary_scaled")
DEFAULT_BETA_NORM = "paper"


def check_beta_norm(beta_norm: str) -> str:
    """``beta_norm`` itself if it is one of :data:`BETA_NORMS`, else ValueError naming it."""
    if beta_norm not in BETA_NORMS:
        raise ValueError(f"beta_norm must be one of {BETA_NORMS}, got {beta_norm!r}")
    return beta_norm


def _source_exists(layer: int, level: int) -> bool:
    """Whether a level-``level`` node feeds layer ``layer`` (the stem is the only one for layer 0)."""
    return 0 <= level <= min(layer, NUM_LEVELS - 1)


def _move_exists(layer: int, level: int, k: int) -> bool:
    return _source_exists(layer, level) and 0 <= level + k - 1 < NUM_LEVELS


def beta_mask(layers: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool ``[layers, 4, 3]``: True where ``beta[l, s, k]`` is a move that exists."""
    mask = torch.zeros(layers, NUM_LEVELS, 3, dtype=torch.bool)
    for layer, level, k in itertools.product(range(layers), range(NUM_LEVELS), range(3)):
        mask[layer, level, k] = _move_exists(layer, level, k)
    return mask.to(device) if device is not None else mask


def normalized_beta(beta: torch.Tensor, beta_norm: str = DEFAULT_BETA_NORM) -> torch.Tensor:
    """Move weights ``[L, 4, 3]`` from beta logits; moves that do not exist are 0.

    ``"paper"`` (eq. 7): softmax over each node's existing moves. ``"boundary_scaled"``: the same,
    times 2/3 for nodes with two moves (strides 4 and 32, the stem), so uniform beta gives 1/3.
    Differentiable; used by the supernet and by the decoders.
    """
    check_beta_norm(beta_norm)
    if beta.dim() != 3 or tuple(beta.shape[1:]) != (NUM_LEVELS, 3):
        raise ValueError(f"beta must have shape [L, {NUM_LEVELS}, 3], got {tuple(beta.shape)}")
    mask = beta_mask(beta.shape[0], beta.device)
    # a finite fill keeps rows without any move NaN-free (also in the backward pass)
    logits = beta.masked_fill(~mask, torch.finfo(beta.dtype).min)
    weights = torch.softmax(logits, dim=-1) * mask
    if beta_norm == "boundary_scaled":
        two_way = mask.sum(dim=-1, keepdim=True) == 2
        weights = weights * torch.where(two_way, 2.0 / 3.0, 1.0).to(weights.dtype)
    return weights


def _log_weights(beta: torch.Tensor, beta_norm: str) -> list[list[list[float]]]:
    weights = normalized_beta(beta.detach().double().cpu(), beta_norm)
    mask = beta_mask(beta.shape[0])
    logs = torch.where(mask, weights.clamp_min(1e-300).log(), torch.full_like(weights, -math.inf))
    return logs.tolist()


def path_levels(path: Sequence[int]) -> list[int]:
    """The level (0..3) of each output stride of ``path``."""
    return [STRIDES.index(int(s)) for s in path]


def path_log_prob(beta: torch.Tensor, path: Sequence[int], beta_norm: str = DEFAULT_BETA_NORM) -> float:
    """Log of the product of normalised move weights along ``path`` (output strides, from the stem).

    ``-inf`` for a path that takes a move that does not exist.
    """
    logs = _log_weights(beta, beta_norm)
    if len(path) != len(logs):
        raise ValueError(f"path has {len(path)} layers, beta has {len(logs)}")
    total, source = 0.0, 0
    for layer, target in enumerate(path_levels(path)):
        k = target - source + 1
        if not 0 <= k <= 2:
            return -math.inf
        total += logs[layer][source][k]
        source = target
    return total


def viterbi_path(beta: torch.Tensor, beta_norm: str = DEFAULT_BETA_NORM) -> list[int]:
    """The most probable path (output strides, one per layer) through the normalised beta.

    Dynamic programming in log space from the stem (stride 4): layer ``l`` moves at most one
    level from layer ``l-1``'s level. Ties go to the lower predecessor level, then to the lower
    final level.
    """
    logs = _log_weights(beta, beta_norm)
    score: dict[int, float] = {0: 0.0}  # the stem, at level 0
    back: list[dict[int, int]] = []
    for layer, layer_logs in enumerate(logs):
        new_score: dict[int, float] = {}
        pointers: dict[int, int] = {}
        for target in range(min(layer + 1, NUM_LEVELS - 1) + 1):
            best, best_source = -math.inf, None
            for source in (target - 1, target, target + 1):
                if source not in score:
                    continue
                candidate = score[source] + layer_logs[source][target - source + 1]
                if best_source is None or candidate > best:
                    best, best_source = candidate, source
            if best_source is not None:
                new_score[target], pointers[target] = best, best_source
        score = new_score
        back.append(pointers)
    if not back:
        return []
    level = max(sorted(score), key=lambda t: (score[t], -t))
    levels = [level]
    for pointers in reversed(back[1:]):
        level = pointers[level]
        levels.append(level)
    return [STRIDES[t] for t in reversed(levels)]


def greedy_path(beta: torch.Tensor, beta_norm: str = DEFAULT_BETA_NORM) -> list[int]:
    """Follow the strongest existing move out of the current node, layer by layer (not optimal)."""
    logs = _log_weights(beta, beta_norm)
    level, path = 0, []
    for layer_logs in logs:
        row = layer_logs[level]
        k = max((k for k in range(3) if row[k] > -math.inf), key=lambda k: (row[k], -k))
        level = level + k - 1
        path.append(STRIDES[level])
    return path


def _next_levels(level: int) -> range:
    return range(max(level - 1, 0), min(level + 1, NUM_LEVELS - 1) + 1)


def path_counts(layers: int) -> list[list[int]]:
    """``counts[l][s]``: the number of ways to choose the levels of layers ``l..layers-1`` when
    the node feeding layer ``l`` is at level ``s`` (the stem, level 0, feeds layer 0).

    ``counts[0][0]`` is the number of network paths of ``layers`` layers; ``counts[layers]`` is
    all ones. Dynamic programming backwards over (layer, level).
    """
    if layers < 1:
        raise ValueError(f"need layers >= 1, got {layers}")
    counts = [[1] * NUM_LEVELS]
    for _ in range(layers):
        after = counts[0]
        counts.insert(0, [sum(after[t] for t in _next_levels(s)) for s in range(NUM_LEVELS)])
    return counts


def sample_path(layers: int, rng: random.Random) -> list[int]:
    """A network path (output strides) drawn uniformly from all valid paths of ``layers`` layers.

    From the stem, each layer's level is chosen with probability proportional to the number of
    completions through it (:func:`path_counts`), using integer arithmetic, so every path has
    probability exactly ``1 / path_counts(layers)[0][0]`` under a uniform ``rng``.
    """
    counts = path_counts(layers)
    level, path = 0, []
    for layer in range(layers):
        ticket = rng.randrange(counts[layer][level])
        for target in _next_levels(level):
            if ticket < counts[layer + 1][target]:
                break
            ticket -= counts[layer + 1][target]
        level = target
        path.append(STRIDES[level])
    return path


def level_sizes(stem_size: Sequence[int]) -> list[tuple[int, int]]:
    """Spatial size of levels 0..3 from the stride-4 size: ceil halving (65 -> 17, 9, 5, 3)."""
    sizes = [(int(stem_size[0]), int(stem_size[1]))]
    for _ in range(NUM_LEVELS - 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def move_labels() -> dict[tuple[int, int], str]:
    """``(source level, k) -> "s->t"`` (output strides) for every move of the beta layout that can exist."""
    return {(level, k): f"{STRIDES[level]}\u2192{STRIDES[level + k - 1]}"
            for level in range(NUM_LEVELS) for k in range(3) if 0 <= level + k - 1 < NUM_LEVELS}


def top_paths(beta: torch.Tensor, k: int, beta_norm: str = DEFAULT_BETA_NORM) -> list[tuple[float, list[int]]]:
    """The ``k`` most probable paths, ``(log probability, output strides)``, most probable first.

    Viterbi keeping the ``k`` best partial paths into every (layer, level): a path among the ``k`` best overall has,
    at each node it visits, a prefix among the ``k`` best into that node.
    """
    logs = _log_weights(beta, beta_norm)
    beams: dict[int, list[tuple[float, tuple[int, ...]]]] = {0: [(0.0, ())]}  # the stem, at level 0
    for layer, layer_logs in enumerate(logs):
        new: dict[int, list[tuple[float, tuple[int, ...]]]] = {}
        for target in range(min(layer + 1, NUM_LEVELS - 1) + 1):
            candidates = [(score + layer_logs[source][target - source + 1], levels + (target,))
                          for source in (target - 1, target, target + 1) if source in beams
                          and layer_logs[source][target - source + 1] > -math.inf for score, levels in beams[source]]
            if candidates:
                new[target] = sorted(candidates, key=lambda c: -c[0])[:k]
        beams = new
    best = sorted((c for found in beams.values() for c in found), key=lambda c: -c[0])[:k]
    return [(score, [STRIDES[t] for t in levels]) for score, levels in best]
