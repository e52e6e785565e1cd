"""The Auto-DeepLab space: ``supernet`` (search), ``decode`` (cell rule + Viterbi path), ``build`` (retrain),
``sample`` (uniform over genotypes) and ``figures`` (the network path, the cell, the heatmaps)."""
from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from nasplat import (Genotype, SearchSpace, cell_edge_weights, cell_edges, check_pc_options, decode_cell, k_best,
                     register_space, top_cells)

from search_spaces.autodeeplab.cost import AutoDeepLabCostModel
from search_spaces.autodeeplab.genotype import AutoDeepLabGenotype
from search_spaces.autodeeplab.network import AutoDeepLabNetwork
from search_spaces.autodeeplab.ops import AUTODEEPLAB_OPS
from search_spaces.autodeeplab.paths import (DEFAULT_BETA_NORM, STRIDES, check_beta_norm, sample_path, top_paths,
                                             viterbi_path)
from search_spaces.autodeeplab.supernet import DEFAULT_BLOCKS, DEFAULT_LAYERS, AutoDeepLabSupernet


def _blocks_from_edges(num_edges: int) -> int:
    blocks = int(round((math.sqrt(9 + 8 * num_edges) - 3) / 2))
    if blocks < 1 or len(cell_edges(blocks)) != num_edges:
        raise ValueError(f"alpha has {num_edges} rows, which is no B-block cell (B*(B+3)/2 rows)")
    return blocks


@register_space
class AutoDeepLabSpace(SearchSpace):
    """Auto-DeepLab: ``supernet`` (search), ``decode`` (cell rule + Viterbi path), ``build`` (retrain),
    ``sample`` and ``figures``."""

    name = "autodeeplab"
    ops = AUTODEEPLAB_OPS
    genotype_type = AutoDeepLabGenotype

    def supernet(self, num_classes: int, **options) -> AutoDeepLabSupernet:
        """Options: ``F=8, L=12, B=5, beta_norm="paper", checkpoint_cells=False, stem_channels, fused=True``."""
        return AutoDeepLabSupernet(num_classes, **options)

    def min_image_size(self, F: int = 8, partial_channels: int = 1, edge_normalization: bool | None = None,
                       **options) -> int:
        check_pc_options(F, partial_channels, edge_normalization,
                         f"F={F}: the cells at stride 4 have F channels per block")
        return max(STRIDES)

    def decode(self, arch: Mapping[str, torch.Tensor], beta_norm: str | None = None) -> AutoDeepLabGenotype:
        """Cell: :func:`nasplat.decode_cell` (top-2 inputs per block, best non-``none`` op).
        Path: :func:`viterbi_path` over the normalised beta.

        ``beta_norm`` is the supernet's (``supernet.decode_options()``); ``None`` means the
        default, ``"paper"``.
        """
        self.require_arch(arch, "alpha", "beta")
        alpha, beta = arch["alpha"], arch["beta"]
        beta_norm = check_beta_norm(beta_norm or DEFAULT_BETA_NORM)
        blocks = _blocks_from_edges(alpha.shape[0])
        return AutoDeepLabGenotype(
            cell=decode_cell(alpha, self.ops, num_nodes=blocks, edge_weights=cell_edge_weights(arch, "alpha", blocks)),
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
        genotype) matter, the others (``F``, ``checkpoint_cells``, ``stem_channels``, ``fused``,
        ``partial_channels``, ``edge_normalization``) are accepted and ignored.
        """
        unknown = sorted(set(options) - {"F", "checkpoint_cells", "stem_channels", "fused", "partial_channels",
                                         "edge_normalization"})
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
            beta_norm=check_beta_norm(beta_norm),
        )

    def cost_model(self, image_size: int, F: int = 8, L: int = DEFAULT_LAYERS, B: int = DEFAULT_BLOCKS,
                   beta_norm: str = DEFAULT_BETA_NORM, checkpoint_cells: bool = False,
                   stem_channels: Sequence[int] = (64, 64, 128), fused: bool = True, partial_channels: int = 1,
                   edge_normalization: bool | None = None) -> AutoDeepLabCostModel:
        """The cell's ops at every level, for the retrain network with the supernet's ``F`` (:mod:`.cost`); how the
        supernet runs (``checkpoint_cells``, ``fused``, the PC-DARTS options) does not change it."""
        return AutoDeepLabCostModel(image_size, self.ops, F, L, B, {"F": F, "stem_channels": tuple(stem_channels)})

    def top_genotypes(self, arch: Mapping[str, torch.Tensor], k: int,
                      beta_norm: str | None = None) -> list[tuple[float, AutoDeepLabGenotype]]:
        """Strength: the log of the product of the cell's kept op probabilities (:func:`nasplat.top_cells`) and the
        path's normalised move weights (:func:`.paths.top_paths`); rank 1 is :meth:`decode`."""
        self.require_arch(arch, "alpha", "beta")
        beta_norm = check_beta_norm(beta_norm or DEFAULT_BETA_NORM)
        blocks = _blocks_from_edges(arch["alpha"].shape[0])
        choices = [top_cells(arch["alpha"], self.ops, blocks, k, edge_weights=cell_edge_weights(arch, "alpha", blocks)),
                   top_paths(arch["beta"], k, beta_norm)]
        return [(score, AutoDeepLabGenotype(cell=cell, cell_concat=tuple(range(2, 2 + blocks)), path=path,
                                            beta_norm=beta_norm))
                for score, (cell, path) in k_best(choices, k)]

    def build(self, genotype: Genotype, num_classes: int, **options) -> AutoDeepLabNetwork:
        """Options: ``F=20`` (S/M/L: 20/32/48) and those of :class:`AutoDeepLabNetwork`."""
        self.require_genotype(genotype)
        return AutoDeepLabNetwork(genotype, num_classes, **options)

    def figures(self, genotype: Genotype, directory: str | os.PathLike, distributions: Mapping[str, Any] | None = None,
                history: Sequence[tuple[int, Mapping[str, Any]]] = (), title: str = "") -> list[Path]:
        """The network path (``network_path.*``), the cell (``cell.*``), the alpha heatmap with inputs
        ``H^{l-2}``/``H^{l-1}``, the beta heatmap (a row per move ``stride -> stride``) and their evolution."""
        self.require_genotype(genotype)
        from search_spaces.autodeeplab.figures import draw  # matplotlib only when drawing

        return draw(genotype, self.ops, directory, distributions, history, title)
