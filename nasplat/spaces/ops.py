"""Candidate operations for cell-based search: an op registry, the eight DARTS
primitives (as defined by the official DARTS code) and the supernet mixed op.

Every op factory has the signature ``(C, stride, affine) -> nn.Module``: it maps
``C`` channels to ``C`` channels and, at stride 2, an ``H x W`` input to
``ceil(H/2) x ceil(W/2)``, so that all edges entering a node agree on odd crop
sizes too.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nasplat.spaces.partial import check_partial_channels, merge_partial, partial_bypass

__all__ = [
    "OpFactory",
    "UnknownOpError",
    "register_op",
    "get_op",
    "build_op",
    "registered_ops",
    "DARTS_OPS",
    "Zero",
    "Identity",
    "FactorizedReduce",
    "ReLUConvBN",
    "SepConv",
    "DilConv",
    "PoolBN",
    "MixedOp",
]

OpFactory = Callable[[int, int, bool], nn.Module]
"""``(C, stride, affine) -> nn.Module`` with ``C`` channels in and out."""

# Official DARTS PRIMITIVES order; the index breaks ties when decoding genotypes.
DARTS_OPS: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

_REGISTRY: dict[str, OpFactory] = {}


class UnknownOpError(KeyError):
    """Raised by :func:`get_op` for a name that is not registered."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.message = f"unknown op {name!r}; registered ops: {', '.join(known)}"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return self.message


def register_op(name: str, *, override: bool = False) -> Callable[[OpFactory], OpFactory]:
    """Decorator registering an op factory under ``name``.

    Registering a name twice raises ``ValueError`` unless ``override=True``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"op name must be a non-empty string, got {name!r}")

    def decorator(factory: OpFactory) -> OpFactory:
        if name in _REGISTRY and not override:
            raise ValueError(f"op {name!r} is already registered (pass override=True to replace it)")
        _REGISTRY[name] = factory
        return factory

    return decorator


def get_op(name: str) -> OpFactory:
    """Return the factory registered under ``name`` (``UnknownOpError`` if none)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownOpError(name, registered_ops()) from None


def build_op(name: str, C: int, stride: int, affine: bool = True) -> nn.Module:
    """Instantiate the registered op ``name`` for ``C`` channels and ``stride``."""
    return get_op(name)(C, stride, affine)


def registered_ops() -> tuple[str, ...]:
    """Sorted names of all registered ops."""
    return tuple(sorted(_REGISTRY))


# ---------------------------------------------------------------- building blocks


class Zero(nn.Module):
    """Outputs zeros; at stride ``s`` the spatial size becomes ``ceil(H/s)``."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Identity(nn.Module):
    """Returns its input unchanged (the very same tensor object); in training with :attr:`dropout` ``p > 0``,
    ``F.dropout(x, p)`` instead (P-DARTS's dropout on skip connections, set by the ``skip_dropout`` remedy)."""

    def __init__(self) -> None:
        super().__init__()
        self.dropout = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout and self.training:
            return F.dropout(x, self.dropout)
        return x


class ReLUConvBN(nn.Module):
    """ReLU -> Conv2d (no bias) -> BatchNorm2d."""

    def __init__(
        self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True
    ) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def _separable_unit(
    C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, dilation: int, affine: bool
) -> list[nn.Module]:
    """ReLU, depthwise conv, 1x1 conv, BN: the unit shared by DilConv and SepConv."""
    return [
        nn.ReLU(inplace=False),
        nn.Conv2d(
            C_in, C_in, kernel_size, stride=stride, padding=padding,
            dilation=dilation, groups=C_in, bias=False,
        ),
        nn.Conv2d(C_in, C_out, 1, bias=False),
        nn.BatchNorm2d(C_out, affine=affine),
    ]


class DilConv(nn.Module):
    """ReLU -> dilated depthwise conv -> 1x1 conv -> BatchNorm2d."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
    ) -> None:
        super().__init__()
        self.op = nn.Sequential(*_separable_unit(C_in, C_out, kernel_size, stride, padding, dilation, affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """Depthwise-separable unit applied twice (only the first one strided)."""

    def __init__(
        self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True
    ) -> None:
        super().__init__()
        self.op = nn.Sequential(
            *_separable_unit(C_in, C_in, kernel_size, stride, padding, 1, affine),
            *_separable_unit(C_in, C_out, kernel_size, 1, padding, 1, affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FactorizedReduce(nn.Module):
    """Halves the spatial size with two offset 1x1 stride-2 convs, concatenated.

    Unlike the reference, the shifted branch pads the input by one row/column at
    the bottom/right, so odd sizes give ``ceil(H/2)`` in both branches; for even
    sizes the result is identical to the reference.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True) -> None:
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even C_out, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


# ---------------------------------------------------------------- DARTS primitives


@register_op("none")
def _none(C: int, stride: int, affine: bool) -> nn.Module:
    return Zero(stride)


@register_op("max_pool_3x3")
def _max_pool_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.MaxPool2d(3, stride=stride, padding=1)


@register_op("avg_pool_3x3")
def _avg_pool_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


@register_op("skip_connect")
def _skip_connect(C: int, stride: int, affine: bool) -> nn.Module:
    if stride == 1:
        return Identity()
    if stride == 2:
        return FactorizedReduce(C, C, affine)
    raise ValueError(f"skip_connect supports stride 1 or 2, got {stride}")


@register_op("sep_conv_3x3")
def _sep_conv_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    return SepConv(C, C, 3, stride, 1, affine)


@register_op("sep_conv_5x5")
def _sep_conv_5x5(C: int, stride: int, affine: bool) -> nn.Module:
    return SepConv(C, C, 5, stride, 2, affine)


@register_op("dil_conv_3x3")
def _dil_conv_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    return DilConv(C, C, 3, stride, 2, 2, affine)


@register_op("dil_conv_5x5")
def _dil_conv_5x5(C: int, stride: int, affine: bool) -> nn.Module:
    return DilConv(C, C, 5, stride, 4, 2, affine)


# ---------------------------------------------------------------- mixed op


class PoolBN(nn.Sequential):
    """A pool followed by a non-affine BatchNorm2d: a pool candidate of the supernet (keys ``0`` and ``1``)."""

    def __init__(self, pool: nn.Module, C: int) -> None:
        super().__init__(pool, nn.BatchNorm2d(C, affine=False))


class MixedOp(nn.Module):
    """Supernet edge: weighted sum of one instance of each op in ``ops``.

    As in the DARTS supernet, ops whose name contains ``"pool"`` are followed by
    a non-affine BatchNorm2d. :attr:`auxiliary_skip` (default 0) is a weight ``beta``: a stride-1 edge
    adds ``beta * x``, the auxiliary skip connection of DARTS- (set by the ``darts_minus`` remedy).
    ``partial_channels=K`` (PC-DARTS, :mod:`nasplat.spaces.partial`): the ops see the first ``C/K`` channels,
    the others pass by, and the joined channels are shuffled in ``K`` groups.
    """

    def __init__(self, C: int, stride: int, ops: Sequence[str], affine: bool = False,
                 partial_channels: int = 1) -> None:
        super().__init__()
        check_partial_channels(C, partial_channels)
        self.stride = stride
        self.partial_channels = partial_channels
        self.auxiliary_skip = 0.0
        names = tuple(ops)
        if not names:
            raise ValueError("MixedOp needs at least one op")
        if len(set(names)) != len(names):
            raise ValueError(f"MixedOp got duplicate op names: {names}")
        self.ops: tuple[str, ...] = names
        self.candidates = nn.ModuleList()
        C_ops = C // partial_channels
        for name in names:
            op = build_op(name, C_ops, stride, affine)
            if "pool" in name:
                op = PoolBN(op, C_ops)
            self.candidates.append(op)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Return ``sum_k weights[k] * op_k(x)``; ``weights`` is 1-D of length ``len(ops)``."""
        if weights.dim() != 1 or weights.shape[0] != len(self.ops):
            raise ValueError(
                f"MixedOp expects a 1-D weights tensor of length {len(self.ops)} "
                f"(one per op in {self.ops}), got shape {tuple(weights.shape)}"
            )
        inputs = self.op_input(x)
        return self.finish(sum(w * op(inputs) for w, op in zip(weights, self.candidates)), x)

    def op_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the candidate ops see: ``x``, or its first ``C/K`` channels with partial channels."""
        return x if self.partial_channels == 1 else x[:, : x.shape[1] // self.partial_channels]

    def bypass(self, x: torch.Tensor) -> torch.Tensor | None:
        """The channels that pass the ops by (partial channels), or None when every channel goes through them."""
        return None if self.partial_channels == 1 else partial_bypass(x, self.partial_channels, self.stride)

    def finish(self, output: torch.Tensor, x: torch.Tensor, bypass: torch.Tensor | None = None) -> torch.Tensor:
        """The edge's output from the ops' weighted sum ``output``: the bypassed channels joined back (partial
        channels; ``bypass``: :meth:`bypass` of ``x`` when the caller has it already), then ``+ auxiliary_skip * x``
        on a stride-1 edge with a nonzero weight."""
        if self.partial_channels != 1:
            output = merge_partial(output, self.bypass(x) if bypass is None else bypass, self.partial_channels)
        if self.auxiliary_skip and self.stride == 1:
            return output + self.auxiliary_skip * x
        return output
