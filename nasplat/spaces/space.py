"""The search-space API: a space builds a supernet, decodes its arch parameters, builds a network.

Spaces are registered and looked up in :mod:`nasplat.spaces.registry`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import nn

from nasplat.spaces.genotype import Genotype
from nasplat.spaces.partial import edge_parameter_names

if TYPE_CHECKING:
    from nasplat.searching.cost import CostModel

ARCH_PREFIX = "arch."


@dataclasses.dataclass(frozen=True)
class DecisionCell:
    """An arch parameter whose rows are the edges of a cell in the DARTS notation (``[edges, len(ops)]``, rows in
    :func:`nasplat.cell_edges` order): ``num_nodes`` nodes, each keeping ``keep`` of its inputs, ``limits`` (op name
    -> most edges with it, None for no limit) as the space's decode applies them. Search methods that decide cells
    edge by edge (the ``sgas`` remedy) act on these."""

    num_nodes: int
    ops: tuple[str, ...]
    num_inputs: int = 2
    keep: int = 2
    limits: Mapping[str, int | None] = dataclasses.field(default_factory=dict)


class Supernet(nn.Module):
    """A module whose architecture parameters live apart from its weights.

    Subclasses call :meth:`add_arch_parameter` in ``__init__``; the arch parameters are
    registered under ``arch.<name>`` so they travel in ``state_dict`` but are excluded from
    :meth:`weight_parameters`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.arch = nn.ParameterDict()

    def add_arch_parameter(self, name: str, value: torch.Tensor) -> nn.Parameter:
        param = nn.Parameter(value)
        self.arch[name] = param
        return param

    def add_edge_parameters(self, prefix: str, num_nodes: int, num_inputs: int = 2) -> None:
        """Register one cell's edge-normalisation parameters (PC-DARTS, :mod:`nasplat.spaces.partial`):
        ``<prefix>_edges<node>`` with ``num_inputs + node`` logits each, initialised as alpha (``1e-3 * N(0, 1)``)."""
        for node, name in enumerate(edge_parameter_names(prefix, num_nodes)):
            self.add_arch_parameter(name, 1e-3 * torch.randn(num_inputs + node))

    def arch_parameters(self) -> dict[str, nn.Parameter]:
        """Name -> architecture parameter; the input that ``space.decode`` expects."""
        return dict(self.arch.items())

    def decode_options(self) -> dict[str, object]:
        """Keyword options this supernet's space needs to decode its arch parameters (default none)."""
        return {}

    def decision_cells(self) -> dict[str, DecisionCell]:
        """Arch parameter name -> the cell it describes, for the parameters that are DARTS-notation cells (default
        none: edge-by-edge decisions, such as the ``sgas`` remedy, then do nothing)."""
        return {}

    def arch_distributions(self) -> dict[str, torch.Tensor]:
        """Name -> probabilities over the last dimension (softmax by default; spaces with masked
        or differently normalised parameters override this). Rows of zeros mean "no choice here"."""
        return {name: torch.softmax(alpha.detach(), dim=-1) for name, alpha in self.arch.items()}

    def named_weight_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if not n.startswith(ARCH_PREFIX)]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_weight_parameters()]


class SearchSpace(ABC):
    """What every search space provides. Subclass, set the class attributes, register it."""

    name: str = ""
    ops: tuple[str, ...] = ()
    genotype_type: type[Genotype] = Genotype
    search_defaults: dict[str, object] = {}
    """Supernet options ``nasplat search`` uses unless the user sets them (``--space-option`` overrides each)."""

    @abstractmethod
    def supernet(self, num_classes: int, **options) -> Supernet:
        """The over-parameterised network searched by the bi-level optimiser."""

    @abstractmethod
    def decode(self, arch: Mapping[str, torch.Tensor], **options) -> Genotype:
        """A pure function of the arch parameters (``supernet.arch_parameters()``) and of the
        supernet's ``decode_options()`` (e.g. how a space normalises its parameters)."""

    @abstractmethod
    def build(self, genotype: Genotype, num_classes: int, **options) -> nn.Module:
        """The discrete network to retrain: [N,3,H,W] -> logits [N,num_classes,H,W]."""

    def sample(self, rng: random.Random | int, **options) -> Genotype:
        """A random genotype of this space, drawn with ``rng`` (a ``random.Random`` or a seed).

        Default: decode i.i.d. standard Gaussian tensors shaped like the arch parameters of
        ``self.supernet(2, **options)`` (built once per options, then cached), with that
        supernet's ``decode_options()``. This is uniform over the decoded genotypes when the
        decode picks, within groups of rows that are exchangeable, the arg-max entry or the top-k
        rows by a symmetric score (ties have probability zero): true of the DARTS cell rule
        (:func:`nasplat.decode_cell`: each node's input pair and each edge's op are uniform and
        independent), not of path decoders such as Auto-DeepLab's Viterbi, whose space overrides
        this method. A space whose decode is not of that kind should override it too.
        """
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        shapes, decode_options = self._arch_template(options)
        generator = torch.Generator().manual_seed(rng.getrandbits(63))
        arch = {name: torch.randn(shape, generator=generator, dtype=torch.float64) for name, shape in shapes.items()}
        return self.decode(arch, **decode_options)

    def figures(self, genotype: Genotype, directory: str | os.PathLike, distributions: Mapping[str, Any] | None = None,
                history: Sequence[tuple[int, Mapping[str, Any]]] = (), title: str = "") -> list[Path]:
        """Draw the pictures of an architecture into ``directory``; return the files written.

        The search calls it every ``--picture-interval`` epochs with the decoded ``genotype``, the
        epoch's ``supernet.arch_distributions()`` and their ``(step, distributions)`` history.
        Default (:mod:`nasplat.viz`): one DAG per ``NAME``/``NAME_concat`` cell field of the
        genotype (DARTS notation, ``cell_NAME.{dot,png,svg}``), a heatmap of each distribution
        (rows = cell edges, columns = :attr:`ops`) and, over two or more entries, its evolution.
        """
        from nasplat.viz import render_arch_figures, render_genotype_cells  # matplotlib only when drawing

        written = [path for rendered in render_genotype_cells(genotype, directory) for path in rendered.paths]
        return written + render_arch_figures(distributions, history, self.ops, directory, title)

    def _arch_template(self, options: Mapping[str, object]) -> tuple[dict[str, torch.Size], dict[str, object]]:
        key = (type(self), repr(sorted(options.items())))
        if key not in _ARCH_TEMPLATES:
            supernet = self.supernet(2, **options)
            shapes = {name: param.shape for name, param in supernet.arch_parameters().items()}
            _ARCH_TEMPLATES[key] = (shapes, dict(supernet.decode_options()))
        return _ARCH_TEMPLATES[key]

    def min_image_size(self, **options) -> int:
        """The smallest crop the supernet built with ``options`` takes: its total stride (a smaller crop leaves
        the coarsest feature maps under one pixel). Checked before a search starts; default 1 (no limit)."""
        return 1

    def cost_model(self, image_size: int, **options) -> CostModel | None:
        """Optional, for cost-aware search (``--cost``): the :class:`nasplat.CostModel` of the network that the
        supernet built with ``options`` searches, at crop ``image_size``: its candidate ops with their input shapes
        (what ``nasplat profile-ops`` measures), the expected cost of arch parameters and a genotype's cost.
        Default None: the space has no cost model, and a cost-aware search of it is refused."""
        return None

    def top_genotypes(self, arch: Mapping[str, torch.Tensor], k: int, **options) -> list[tuple[float, Genotype]]:
        """Optional: up to ``k`` distinct genotypes of ``arch``, strongest first, as ``(strength, genotype)``; rank 1
        is ``decode(arch, **options)`` (``options``: the supernet's ``decode_options()``). Each search trial logs
        them (``--top-k``) and ``nasplat retrain --rank N`` takes the N-th. Default: the decoded genotype alone,
        strength NaN (a space defines its own strength when it overrides this)."""
        return [(math.nan, self.decode(arch, **options))]

    def require_arch(self, arch: Mapping[str, torch.Tensor], *names: str) -> None:
        """Raise KeyError naming the space and the missing tensors if ``arch`` lacks any of ``names``."""
        missing = sorted(set(names) - set(arch))
        if missing:
            raise KeyError(f"{self.name} arch parameters need {list(names)}; missing {missing}")

    def require_genotype(self, genotype: object) -> None:
        """Raise TypeError unless ``genotype`` is this space's genotype type."""
        if not isinstance(genotype, self.genotype_type):
            raise TypeError(
                f"the {self.name} space builds {self.genotype_type.__name__}, got {type(genotype).__name__} "
                f"(space {getattr(genotype, 'space', None)!r})"
            )

    def __repr__(self) -> str:
        return f"<search space {self.name!r}: {len(self.ops)} ops>"


_ARCH_TEMPLATES: dict[tuple[type, str], tuple[dict[str, torch.Size], dict[str, object]]] = {}
"""(space class, options) -> arch parameter shapes and decode options, for :meth:`SearchSpace.sample`."""
