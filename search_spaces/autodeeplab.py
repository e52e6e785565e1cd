"""The Auto-DeepLab hierarchical space (Liu et al., CVPR 2019, arXiv 1901.02985).

Two levels are searched at once:

* **Cell** (alpha, ``[20, 8]``, shared by every cell): a DAG of ``B = 5`` blocks; block ``b`` sums
  a mixed op over each earlier state (``H^{l-2}``, ``H^{l-1}``, blocks ``0..b-1``: 2+3+4+5+6 = 20
  edges, :func:`nasplat.cell_edges` order). The cell output concatenates all ``B`` blocks. Ops
  (:data:`AUTODEEPLAB_OPS`, DARTS-like order, the index breaks decode ties): ``none``, 3x3 max and
  average pooling, skip, 3x3/5x5 separable convs (the DARTS unit applied twice) and 3x3/5x5
  *full* atrous convs at rate 2 (``atrous_conv_3x3``/``_5x5``: ReLU, full kxk conv with dilation
  2, BN, as TF ``nas_cell.py``; registered here through :func:`nasplat.register_op`).
* **Network** (beta, ``[L, 4, 3]``): ``L = 12`` layers over levels 0..3 = output strides
  4/8/16/32 after a stem that reaches stride 4. Paper eq. 6: the state at stride ``s`` of layer
  ``l`` is ``sum over moves m in {s/2->s, s->s, 2s->s} of beta_m * Cell(H^{l-1} at the source,
  H^{l-2} at s)``. A node at stride ``s`` has ``B*F*s/4`` channels (``F*s/4`` per block).

Conventions and choices (see also ``docs/autodeeplab.md``):

* ``beta[l, s, k]``: logit of the move **out of** the level-``s`` node that feeds layer ``l``;
  ``k = 0`` to the finer level ``s-1``, ``1`` the same level, ``2`` the coarser level ``s+1``
  (the NoamRosenberg port's source-indexed layout). Layer ``l >= 1`` is fed by the nodes of
  layer ``l-1`` (levels ``0..min(l, 3)``), so layer ``l`` reaches levels ``0..min(l+1, 3)``.
  **Layer 0 is fed by the stem, which counts as the level-0 node**: ``beta[0, 0, 1]`` is the
  stem -> stride 4 move and ``beta[0, 0, 2]`` the stem -> stride 8 move; every other entry of
  ``beta[0]`` is unused. Entries of moves that do not exist are masked out of the normalisation
  and come out as 0 (:func:`beta_mask`, :func:`normalized_beta`).
* **Normalisation** (``beta_norm``). ``"paper"`` (default): eq. 7, each node's outgoing weights
  are a softmax over the moves that exist, so they sum to 1. ``"boundary_scaled"``: the
  NoamRosenberg port (commit 5b6f622, not in the paper): nodes with only two moves (strides 4
  and 32, and the stem) use a 2-way softmax times 2/3. The default is the paper's rule because
  it is the published method and the one the paper's results come from; the known consequence
  (REFERENCES section 2) is that with uniform beta a boundary move weighs 1/2 against 1/3 in the
  middle, so early Viterbi decodes lean to paths that hug stride 4 or 32. Pass
  ``beta_norm="boundary_scaled"`` to reproduce the port, where uniform beta weighs every move 1/3.
* **Resampling in the supernet** (the paper's choice): a finer -> coarser move goes through a
  ReLU-3x3 stride-2 conv-BN (``ceil(H/2)``, odd sizes work), a coarser -> finer move through a
  bilinear resize to the exact size of the target level then ReLU-1x1 conv-BN, a same-level move
  through ReLU-1x1 conv-BN. Level sizes follow ceil halving: ``ceil(H/4)``, then ``ceil`` of
  halves, so 65 -> 17, 9, 5, 3.
* **Cell weights in the supernet**: one :class:`nasplat.MixedCell` per (layer, level) node, run
  once per incoming move (as in the NoamRosenberg port), with one input preprocessing per move
  and one for ``H^{l-2}``. The three calls differ only in their ``H^{l-1}`` input.
* **Missing H^{l-2}**: when layer ``l-2`` has no node at the target stride (layers 0..3 near the
  coarse end; layer 0 everywhere) the cell gets its own preprocessed ``H^{l-1}`` as both inputs,
  as DARTS does for its first cell (``s0 = s1 = stem``). Layer 1 at stride 4 uses the stem.
* **Search head**: per level of the last layer, the paper's simplified ASPP (1x1, one 3x3 at rate
  ``96/s``, image pooling; ``B*F*s/4`` filters per branch), a 1x1 projection, a 1x1 classifier;
  the logits are resized to the input and summed over levels.
* **Retrain network** (:class:`AutoDeepLabNetwork`, TF ``hnasnet``): stem 64 (s2) / 64 / 128 (s2),
  the cell along the path with ``F*2^level`` filters per block; cell input preprocessing as in
  TF: ``H^{l-1}`` (bilinearly resized first when the path goes up) through ReLU-1x1-BN,
  ``H^{l-2}`` resized to that size and given ReLU-1x1-BN only on a channel mismatch, ops on the
  cell inputs strided when the path goes down; a ReLU after the last cell, DeepLabV3+ ASPP
  (five branches of 256, full 3x3 convs, rates 6/12/18 scaled to the last stride) and decoder
  (stride-4 features of Cell_2 for the paper path, 48-channel projection, two full 3x3 convs of
  256). With :data:`PAPER_GENOTYPE` and 19 classes this counts 10,147,427 / 21,622,451 /
  44,424,691 parameters for F = 20/32/48 (paper: 10.15M / 21.62M / 44.42M).

Built only from the public ``nasplat`` API, torch and the standard library.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import random
from typing import ClassVar, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from nasplat import (
    DARTS_OPS,
    DiscreteCell,
    Genotype,
    GenotypeError,
    MixedCell,
    ReLUConvBN,
    SearchSpace,
    Supernet,
    cell_edges,
    decode_cell,
    register_op,
    register_space,
    registered_ops,
    resize_to,
)

__all__ = [
    "AUTODEEPLAB_OPS",
    "BETA_NORMS",
    "STRIDES",
    "AtrousConv",
    "AutoDeepLabGenotype",
    "AutoDeepLabNetwork",
    "AutoDeepLabSpace",
    "AutoDeepLabSupernet",
    "PAPER_GENOTYPE",
    "beta_mask",
    "greedy_path",
    "level_sizes",
    "normalized_beta",
    "path_counts",
    "path_log_prob",
    "sample_path",
    "viterbi_path",
]

AUTODEEPLAB_OPS: tuple[str, ...] = tuple(
    name.replace("dil_conv", "atrous_conv") for name in DARTS_OPS
)  # the DARTS order, with full atrous convs in place of the separable dilated ones
"""Candidate ops in alpha's column order (DARTS-like; the index breaks decode ties)."""

STRIDES: tuple[int, ...] = (4, 8, 16, 32)
"""Output stride of levels 0..3."""
NUM_LEVELS = len(STRIDES)
BETA_NORMS: tuple[str, ...] = ("paper", "boundary_scaled")
DEFAULT_BETA_NORM = "paper"
DEFAULT_BLOCKS = 5
DEFAULT_LAYERS = 12

# ---------------------------------------------------------------- ops


class AtrousConv(nn.Module):
    """ReLU -> full (not separable) kxk conv with dilation 2 -> BN (TF ``nas_cell`` ``atrous_kxk``).

    Padding ``k-1`` keeps ``H`` at stride 1 and gives ``ceil(H/2)`` at stride 2 (a strided dilated
    conv; TF instead resizes bilinearly to half and applies the conv at rate 1: same parameters).
    """

    def __init__(self, C: int, kernel_size: int, stride: int, affine: bool = True) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"atrous conv supports stride 1 or 2, got {stride}")
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, kernel_size, stride=stride, padding=kernel_size - 1, dilation=2, bias=False),
            nn.BatchNorm2d(C, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def _atrous_factory(kernel_size: int):
    def factory(C: int, stride: int, affine: bool) -> nn.Module:
        return AtrousConv(C, kernel_size, stride, affine)

    factory.__name__ = f"atrous_conv_{kernel_size}x{kernel_size}"
    return factory


# The module may be imported twice in one process (by module name and by file path), and the
# registry refuses a second registration: register only what is missing.
for _k in (3, 5):
    if f"atrous_conv_{_k}x{_k}" not in registered_ops():
        register_op(f"atrous_conv_{_k}x{_k}")(_atrous_factory(_k))


# ---------------------------------------------------------------- network-level maths


def _check_beta_norm(beta_norm: str) -> str:
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
    _check_beta_norm(beta_norm)
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


def _levels(path: Sequence[int]) -> list[int]:
    return [STRIDES.index(int(s)) for s in path]


def path_log_prob(beta: torch.Tensor, path: Sequence[int], beta_norm: str = DEFAULT_BETA_NORM) -> float:
    """Log of the product of normalised move weights along ``path`` (output strides, from the stem).

    ``-inf`` for a path that takes a move that does not exist.
    """
    logs = _log_weights(beta, beta_norm)
    if len(path) != len(logs):
        raise ValueError(f"path has {len(path)} layers, beta has {len(logs)}")
    total, source = 0.0, 0
    for layer, target in enumerate(_levels(path)):
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


def _blocks_from_edges(num_edges: int) -> int:
    blocks = int(round((math.sqrt(9 + 8 * num_edges) - 3) / 2))
    if blocks < 1 or len(cell_edges(blocks)) != num_edges:
        raise ValueError(f"alpha has {num_edges} rows, which is no B-block cell (B*(B+3)/2 rows)")
    return blocks


# ---------------------------------------------------------------- genotype


@dataclasses.dataclass(frozen=True)
class AutoDeepLabGenotype(Genotype):
    """A decoded Auto-DeepLab architecture.

    ``cell``: ``2B`` ``[op, input]`` pairs; pairs ``2b``, ``2b+1`` feed block ``b``; inputs
    0 = ``H^{l-2}``, 1 = ``H^{l-1}``, ``2..`` = blocks. ``cell_concat``: the states concatenated
    into the cell output (all blocks, ``[2..B+1]``). ``path``: the output stride of each layer.
    ``beta_norm``: the beta normalisation the path was decoded with.
    """

    space: ClassVar[str] = "autodeeplab"
    version: ClassVar[int] = 1

    cell: tuple
    cell_concat: tuple
    path: tuple
    beta_norm: str = DEFAULT_BETA_NORM

    @property
    def blocks(self) -> int:
        return len(self.cell) // 2

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(_levels(self.path))

    def validate(self) -> None:
        allowed_ops = [op for op in AUTODEEPLAB_OPS if op != "none"]
        if not isinstance(self.cell, tuple) or not self.cell or len(self.cell) % 2:
            raise GenotypeError("cell", f"expected a non-empty, even number of [op, input] pairs, got {self.cell!r}")
        for index, pair in enumerate(self.cell):
            where = f"cell[{index}]"
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise GenotypeError(where, f"expected [op, input], got {pair!r}")
            op, source = pair
            if op not in allowed_ops:
                raise GenotypeError(where, f"op {op!r} is not one of {allowed_ops}")
            block = index // 2
            if type(source) is not int or not 0 <= source <= block + 1:
                raise GenotypeError(where, f"input {source!r} must be an integer in 0..{block + 1} for block {block}")
        valid = range(2, 2 + self.blocks)
        concat = self.cell_concat
        if (
            not isinstance(concat, tuple)
            or not concat
            or len(set(concat)) != len(concat)
            or any(type(i) is not int or i not in valid for i in concat)
        ):
            raise GenotypeError("cell_concat", f"expected distinct block indices from {list(valid)}, got {concat!r}")
        if not isinstance(self.path, tuple) or not self.path:
            raise GenotypeError("path", f"expected a non-empty list of output strides, got {self.path!r}")
        for index, stride in enumerate(self.path):
            if type(stride) is not int or stride not in STRIDES:
                raise GenotypeError(f"path[{index}]", f"output stride {stride!r} is not one of {list(STRIDES)}")
        if self.path[0] not in (4, 8):
            raise GenotypeError("path[0]", f"the first layer follows the stride-4 stem: 4 or 8, got {self.path[0]}")
        for index in range(1, len(self.path)):
            before, now = self.path[index - 1], self.path[index]
            if abs(STRIDES.index(now) - STRIDES.index(before)) > 1:
                raise GenotypeError(f"path[{index}]", f"stride {before} -> {now} moves more than one level")
        if self.beta_norm not in BETA_NORMS:
            raise GenotypeError("beta_norm", f"{self.beta_norm!r} is not one of {list(BETA_NORMS)}")


PAPER_GENOTYPE = AutoDeepLabGenotype(
    cell=[["atrous_conv_5x5", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 0], ["atrous_conv_3x3", 1],
          ["sep_conv_3x3", 3], ["sep_conv_3x3", 0], ["sep_conv_5x5", 4], ["sep_conv_5x5", 2],
          ["sep_conv_5x5", 3], ["atrous_conv_5x5", 5]],
    cell_concat=[2, 3, 4, 5, 6],
    path=[4, 4, 4, 8, 16, 8, 16, 16, 32, 32, 16, 8],
    beta_norm="paper",
)
"""The published cell and path (paper Fig. 3 = TF ``hnasnet``, inputs 0/1 un-swapped)."""


# ---------------------------------------------------------------- supernet


class _Stem(nn.Module):
    """3x3 convs with strides 2/1/2 (BN, ReLU between); returns the stride-2 and stride-4 features.

    Outputs are taken after BN and before ReLU (TF ``_nas_stem``): every consumer starts with a ReLU.
    """

    def __init__(self, channels: Sequence[int] = (64, 64, 128)) -> None:
        super().__init__()
        c0, c1, c2 = channels
        self.conv0 = nn.Sequential(nn.Conv2d(3, c0, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c0), nn.ReLU())
        self.conv1 = nn.Sequential(nn.Conv2d(c0, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1))
        self.conv2 = nn.Sequential(nn.ReLU(), nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.conv1(self.conv0(x))
        return half, self.conv2(half)


class _SearchNode(nn.Module):
    """The cell of one (layer, level) node: a preprocessing per incoming move, one mixed DAG.

    ``sources`` maps each existing source level to its channel count.
    """

    def __init__(self, level: int, sources: Mapping[int, int], C_pp: int | None, C: int, blocks: int,
                 ops: Sequence[str]) -> None:
        super().__init__()
        self.blocks = blocks
        pre = {}
        for source, C_in in sources.items():
            if source == level - 1:  # finer -> coarser: stride-2 conv
                pre["down"] = ReLUConvBN(C_in, C, 3, 2, 1, affine=False)
            elif source == level:
                pre["same"] = ReLUConvBN(C_in, C, 1, 1, 0, affine=False)
            else:  # coarser -> finer: bilinear to the target size, then 1x1
                pre["up"] = ReLUConvBN(C_in, C, 1, 1, 0, affine=False)
        self.pre = nn.ModuleDict(pre)
        self.pre0 = ReLUConvBN(C_pp, C, 1, 1, 0, affine=False) if C_pp is not None else None
        self.dag = MixedCell(C, blocks, ops)

    @staticmethod
    def direction(source: int, level: int) -> str:
        return {-1: "down", 0: "same", 1: "up"}[source - level]

    def forward(self, direction: str, h1: torch.Tensor, s0: torch.Tensor | None, weights: torch.Tensor,
                size: Sequence[int]) -> torch.Tensor:
        """One move into this node: ``H^{l-1}`` from the ``direction`` side, ``s0`` = preprocessed ``H^{l-2}``."""
        if direction == "up":
            h1 = resize_to(h1, size)
        s1 = self.pre[direction](h1)
        states = self.dag([s1 if s0 is None else s0, s1], weights)
        return torch.cat(states[-self.blocks:], dim=1)


class _SearchASPP(nn.Module):
    """The search head of one level: 1x1, 3x3 at ``rate``, image pooling -> 1x1 -> classifier."""

    def __init__(self, C: int, rate: int, num_classes: int) -> None:
        super().__init__()
        self.conv1x1 = nn.Sequential(nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C), nn.ReLU())
        self.conv3x3 = nn.Sequential(
            nn.Conv2d(C, C, 3, padding=rate, dilation=rate, bias=False), nn.BatchNorm2d(C), nn.ReLU()
        )
        # no BN on the 1x1 pooled branch: it would fail on a batch of one
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(C, C, 1), nn.ReLU())
        self.project = nn.Sequential(
            nn.Conv2d(3 * C, C, 1, bias=False), nn.BatchNorm2d(C), nn.ReLU(), nn.Conv2d(C, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([self.conv1x1(x), self.conv3x3(x), pooled], dim=1))


class AutoDeepLabSupernet(Supernet):
    """The Auto-DeepLab search network: arch parameters ``alpha [20, 8]`` and ``beta [L, 4, 3]``.

    ``checkpoint_cells=True`` recomputes every cell call in the backward pass
    (``torch.utils.checkpoint``, ``use_reentrant=False``): same outputs, gradients and BN running
    statistics, less memory; it also holds under ``torch.func.functional_call`` (second order).
    """

    def __init__(self, num_classes: int, F: int = 8, L: int = DEFAULT_LAYERS, B: int = DEFAULT_BLOCKS,
                 beta_norm: str = DEFAULT_BETA_NORM, checkpoint_cells: bool = False,
                 stem_channels: Sequence[int] = (64, 64, 128)) -> None:
        super().__init__()
        if F < 1 or L < 1 or B < 1:
            raise ValueError(f"need F, L, B >= 1, got F={F}, L={L}, B={B}")
        self.F, self.L, self.B = F, L, B
        self.beta_norm = _check_beta_norm(beta_norm)
        self.checkpoint_cells = checkpoint_cells
        self.ops = AUTODEEPLAB_OPS
        self.add_arch_parameter("alpha", 1e-3 * torch.randn(len(cell_edges(B)), len(AUTODEEPLAB_OPS)))
        self.add_arch_parameter("beta", 1e-3 * torch.randn(L, NUM_LEVELS, 3))

        self.stem = _Stem(stem_channels)
        C_stem = stem_channels[-1]

        def node_channels(layer: int) -> dict[int, int]:
            """Channels of the nodes of layer ``layer`` (-1: the stem; below: none)."""
            if layer == -1:
                return {0: C_stem}
            if layer < -1:
                return {}
            return {t: B * F * 2**t for t in range(min(layer + 1, NUM_LEVELS - 1) + 1)}

        self.cells = nn.ModuleList()
        for layer in range(L):
            prev, prev_prev = node_channels(layer - 1), node_channels(layer - 2)
            nodes = nn.ModuleDict()
            for level in node_channels(layer):
                sources = {s: prev[s] for s in (level - 1, level, level + 1) if s in prev}
                nodes[str(level)] = _SearchNode(level, sources, prev_prev.get(level), F * 2**level, B, self.ops)
            self.cells.append(nodes)
        self.heads = nn.ModuleDict({
            str(level): _SearchASPP(C, 96 // STRIDES[level], num_classes)
            for level, C in node_channels(L - 1).items()
        })

    def _cell(self, node: _SearchNode, direction: str, h1: torch.Tensor, s0: torch.Tensor | None,
              weights: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if not (self.checkpoint_cells and torch.is_grad_enabled()):
            return node(direction, h1, s0, weights, size)
        # The recomputation runs in the backward pass, after a torch.func.functional_call (the
        # second-order arch step evaluates the net at w' and w+-) has put the module's own
        # parameters back: rerun with the tensors the forward pass actually used. It also gets
        # throwaway copies of the BN buffers, so running statistics are updated once, as without
        # checkpointing.
        params = dict(node.named_parameters())
        calls = []

        def run(h1: torch.Tensor, s0: torch.Tensor | None, weights: torch.Tensor) -> torch.Tensor:
            tensors = params
            if calls:
                tensors = {**params, **{name: b.clone() for name, b in node.named_buffers()}}
            calls.append(None)
            return functional_call(node, tensors, (direction, h1, s0, weights, size))

        return checkpoint(run, h1, s0, weights, use_reentrant=False)

    def decode_options(self) -> dict[str, object]:
        return {"beta_norm": self.beta_norm}

    def arch_distributions(self) -> dict[str, torch.Tensor]:
        """Softmax over alpha's ops; beta as normalised (moves that do not exist are 0)."""
        return {
            "alpha": torch.softmax(self.arch["alpha"].detach(), dim=-1),
            "beta": normalized_beta(self.arch["beta"].detach(), self.beta_norm),
        }

    def states(self, x: torch.Tensor) -> list[dict[int, torch.Tensor]]:
        """Per layer, level -> state (``B*F*2^level`` channels at ``level_sizes`` of the stem output)."""
        weights = torch.softmax(self.arch["alpha"], dim=-1)
        move_weights = normalized_beta(self.arch["beta"], self.beta_norm)
        _, stem = self.stem(x)
        sizes = level_sizes(stem.shape[-2:])
        prev_prev: dict[int, torch.Tensor] = {}
        prev: dict[int, torch.Tensor] = {0: stem}
        layers: list[dict[int, torch.Tensor]] = []
        for layer, nodes in enumerate(self.cells):
            new: dict[int, torch.Tensor] = {}
            for key, node in nodes.items():
                level = int(key)
                s0 = node.pre0(prev_prev[level]) if node.pre0 is not None else None
                total = 0
                for source in (level - 1, level, level + 1):
                    if source not in prev:
                        continue
                    out = self._cell(node, node.direction(source, level), prev[source], s0, weights, sizes[level])
                    total = total + move_weights[layer, source, level - source + 1] * out
                new[level] = total
            prev_prev, prev = prev, new
            layers.append(new)
        return layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.states(x)[-1]
        size = x.shape[-2:]
        return sum(resize_to(head(last[int(level)]), size) for level, head in self.heads.items())


# ---------------------------------------------------------------- retrain network


def _conv_bn_relu(C_in: int, C_out: int, kernel_size: int = 1, rate: int = 1) -> nn.Sequential:
    padding = rate * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(C_in, C_out, kernel_size, padding=padding, dilation=rate, bias=False),
        nn.BatchNorm2d(C_out),
        nn.ReLU(),
    )


class _RetrainCell(nn.Module):
    """TF ``NASBaseCell``: H^{l-1} via ReLU-1x1-BN, H^{l-2} resized (+ReLU-1x1-BN if needed), the DAG."""

    def __init__(self, genotype: AutoDeepLabGenotype, C_pp: int, C_p: int, C: int, stride: int) -> None:
        super().__init__()
        self.concat = genotype.cell_concat
        self.pre1 = ReLUConvBN(C_p, C, 1, 1, 0)
        self.pre0 = ReLUConvBN(C_pp, C, 1, 1, 0) if C_pp != C else None
        self.dag = DiscreteCell(C, genotype.cell, input_stride=stride)

    def forward(self, h0: torch.Tensor, h1: torch.Tensor, drop_path: float = 0.0) -> torch.Tensor:
        s1 = self.pre1(h1)
        s0 = resize_to(h0, s1.shape[-2:])
        if self.pre0 is not None:
            s0 = self.pre0(s0)
        states = self.dag([s0, s1], drop_path)
        return torch.cat([states[i] for i in self.concat], dim=1)


class _ASPP(nn.Module):
    """DeepLabV3+ ASPP: 1x1, three atrous 3x3, image pooling (all ``C``), concat, 1x1 ``C``."""

    def __init__(self, C_in: int, C: int, rates: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(C_in, C, 1)] + [_conv_bn_relu(C_in, C, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(C_in, C, 1))
        self.project = nn.Sequential(_conv_bn_relu((len(rates) + 2) * C, C, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class AutoDeepLabNetwork(nn.Module):
    """The retrain network of a genotype (TF ``hnasnet`` + DeepLabV3+ ASPP and decoder).

    ``F``: filters per block at stride 4 (S/M/L: 20/32/48). ``low_level_cell``: the cell whose
    output feeds the decoder (default: the last cell of the path's initial stride-4 run, Cell_2
    for the paper path; the stem output when the path starts at stride 8). ``aspp_rates``:
    default (6, 12, 18) scaled by 16 / (stride of the last cell).
    """

    def __init__(self, genotype: AutoDeepLabGenotype, num_classes: int, F: int = 20,
                 stem_channels: Sequence[int] = (64, 64, 128), aspp_channels: int = 256,
                 aspp_rates: Sequence[int] | None = None, low_level_channels: int = 48,
                 decoder_channels: int = 256, low_level_cell: int | None = None,
                 dropout: float = 0.1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.genotype = genotype
        self.drop_path = drop_path
        self.levels = genotype.levels
        self.stem = _Stem(stem_channels)
        outputs = [stem_channels[1], stem_channels[2]]  # TF cell_outputs: stride 2, stride 4
        self.cells = nn.ModuleList()
        previous = 0  # the stem's level
        for level in self.levels:
            C = F * 2**level
            stride = 2 if level == previous + 1 else 1
            self.cells.append(_RetrainCell(genotype, outputs[-2], outputs[-1], C, stride))
            outputs.append(len(genotype.cell_concat) * C)
            previous = level

        if low_level_cell is None:
            run = 0
            while run < len(self.levels) and self.levels[run] == 0:
                run += 1
            low_level_cell = run - 1  # -1: the stem
        if not -1 <= low_level_cell < len(self.levels):
            raise ValueError(f"low_level_cell must be in -1..{len(self.levels) - 1}, got {low_level_cell}")
        self.low_level_cell = low_level_cell
        if aspp_rates is None:
            aspp_rates = tuple(r * 16 // genotype.path[-1] for r in (6, 12, 18))
        self.aspp_rates = tuple(aspp_rates)
        self.aspp = _ASPP(outputs[-1], aspp_channels, self.aspp_rates, dropout)
        self.low_level = _conv_bn_relu(outputs[low_level_cell + 2], low_level_channels, 1)
        self.decoder = nn.Sequential(
            _conv_bn_relu(aspp_channels + low_level_channels, decoder_channels, 3),
            _conv_bn_relu(decoder_channels, decoder_channels, 3),
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem outputs (stride 2, stride 4) followed by every cell output."""
        half, stem = self.stem(x)
        sizes = level_sizes(stem.shape[-2:])
        outputs = [half, stem]
        previous = 0
        for cell, level in zip(self.cells, self.levels):
            h1 = outputs[-1]
            if level < previous:
                h1 = resize_to(h1, sizes[level])
            outputs.append(cell(outputs[-2], h1, self.drop_path))
            previous = level
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.features(x)
        high = self.aspp(torch.relu(outputs[-1]))
        low = self.low_level(torch.relu(outputs[self.low_level_cell + 2]))
        high = resize_to(high, low.shape[-2:])
        logits = self.classifier(self.decoder(torch.cat([high, low], dim=1)))
        return resize_to(logits, x.shape[-2:])


# ---------------------------------------------------------------- the space


@register_space
class AutoDeepLabSpace(SearchSpace):
    """Auto-DeepLab: ``supernet`` (search), ``decode`` (cell rule + Viterbi path), ``build`` (retrain)."""

    name = "autodeeplab"
    ops = AUTODEEPLAB_OPS
    genotype_type = AutoDeepLabGenotype

    def supernet(self, num_classes: int, **options) -> AutoDeepLabSupernet:
        """Options: ``F=8, L=12, B=5, beta_norm="paper", checkpoint_cells=False, stem_channels``."""
        return AutoDeepLabSupernet(num_classes, **options)

    def decode(self, arch: Mapping[str, torch.Tensor], beta_norm: str | None = None) -> AutoDeepLabGenotype:
        """Cell: :func:`nasplat.decode_cell` (top-2 inputs per block, best non-``none`` op).
        Path: :func:`viterbi_path` over the normalised beta.

        ``beta_norm`` is the supernet's (``supernet.decode_options()``); ``None`` means the
        default, ``"paper"``.
        """
        self.require_arch(arch, "alpha", "beta")
        alpha, beta = arch["alpha"], arch["beta"]
        beta_norm = _check_beta_norm(beta_norm or DEFAULT_BETA_NORM)
        blocks = _blocks_from_edges(alpha.shape[0])
        return AutoDeepLabGenotype(
            cell=decode_cell(alpha, self.ops, num_nodes=blocks),
            cell_concat=tuple(range(2, 2 + blocks)),
            path=viterbi_path(beta, beta_norm),
            beta_norm=beta_norm,
        )

    def sample(self, rng: random.Random | int, L: int = DEFAULT_LAYERS, B: int = DEFAULT_BLOCKS,
               beta_norm: str = DEFAULT_BETA_NORM, **options) -> AutoDeepLabGenotype:
        """A uniformly random genotype: the path uniform over all valid ``L``-layer paths
        (:func:`sample_path`; Viterbi over random beta is not uniform: it favours some paths), the
        cell by the DARTS rule on i.i.d. Gaussian alpha (input pair and op uniform per block).

        Takes the supernet's options; only ``L``, ``B`` and ``beta_norm`` (recorded in the
        genotype) matter, the others (``F``, ``checkpoint_cells``, ``stem_channels``) are accepted
        and ignored.
        """
        unknown = sorted(set(options) - {"F", "checkpoint_cells", "stem_channels"})
        if unknown:
            raise TypeError(f"{self.name} sample() got unknown supernet options {unknown}")
        if B < 1:
            raise ValueError(f"need B >= 1, got B={B}")
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        generator = torch.Generator().manual_seed(rng.getrandbits(63))
        alpha = torch.randn(len(cell_edges(B)), len(self.ops), generator=generator, dtype=torch.float64)
        return AutoDeepLabGenotype(
            cell=decode_cell(alpha, self.ops, num_nodes=B),
            cell_concat=tuple(range(2, 2 + B)),
            path=sample_path(L, rng),
            beta_norm=_check_beta_norm(beta_norm),
        )

    def build(self, genotype: Genotype, num_classes: int, **options) -> AutoDeepLabNetwork:
        """Options: ``F=20`` (S/M/L: 20/32/48) and those of :class:`AutoDeepLabNetwork`."""
        self.require_genotype(genotype)
        return AutoDeepLabNetwork(genotype, num_classes, **options)
