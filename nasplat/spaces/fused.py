"""The fused supernet path: the edges that leave one state run together, op kind by op kind.

The per-edge path (a :class:`~nasplat.spaces.ops.MixedOp` on every edge) runs every candidate of every
edge as its own small kernels. Here a cell takes the ``E`` edges leaving one state as a group: ops
that depend on the input alone (pools with their BatchNorm, identity) run once per state, the ReLU in
front of the convs runs once per state, and the convs of the group run as one grouped conv over the
``E`` edges stacked along channels (the per-edge weights concatenated). ``none`` adds exactly zero and
is skipped. Parameters and buffers are the per-edge modules' own, so state dicts, optimisers,
``torch.func.functional_call`` and checkpoints see no difference; results agree with the per-edge
path up to float rounding (``tests/test_fused_cell.py``).

A group forward maps the op modules of the ``E`` edges (one per edge, same type and settings), their
shared :class:`GroupInput` and the edges' weights for this op (``[E]``) to ``[N, E, C, H, W]``: edge
``e``'s output times its weight at ``[:, e]``; or to ``None`` when the op adds nothing. Ops that end in
a BatchNorm fold the weight into it (a BN weight of ``w_e`` on edge ``e``'s channels), which saves a
multiply and the tensor it would keep for the backward pass. Register one for an op type with
:func:`register_group_forward`; op types without one run edge by edge, so any registered op works in a
fused cell.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nasplat.spaces.depthwise import depthwise_conv2d, is_channels_last, is_depthwise, pays_off
from nasplat.spaces.ops import DilConv, FactorizedReduce, Identity, PoolBN, SepConv, Zero

__all__ = ["GroupInput", "GroupForward", "register_group_forward", "group_forward", "group_batch_norm", "scaled",
           "stacked_conv"]


class GroupInput:
    """One state and what the edges leaving it share: its ReLU, and that ReLU repeated once per edge.

    ``updates``: how many BatchNorm updates one pass stands for (a cell whose input-0 edges serve several calls
    runs them once and moves the running statistics as that many calls would, see :func:`group_batch_norm`).
    """

    def __init__(self, x: torch.Tensor, edges: int, updates: int = 1) -> None:
        self.x = x
        self.edges = edges
        self.updates = updates
        self._relu: torch.Tensor | None = None
        self._repeated: torch.Tensor | None = None

    @property
    def relu(self) -> torch.Tensor:
        if self._relu is None:
            self._relu = torch.relu(self.x)
        return self._relu

    @property
    def repeated_relu(self) -> torch.Tensor:
        """``[N, E*C, H, W]``: channels ``e*C .. e*C+C-1`` are the ReLU for edge ``e``, in ``x``'s memory layout."""
        if self._repeated is None:
            self._repeated = repeat_channels(self.relu, self.edges)
        return self._repeated


GroupForward = Callable[[Sequence[nn.Module], GroupInput, torch.Tensor], "torch.Tensor | None"]
_GROUP_FORWARDS: dict[type, GroupForward] = {}


def register_group_forward(op_type: type) -> Callable[[GroupForward], GroupForward]:
    """Decorator: ``fn(modules, group_input, scale)`` computes ``op_type`` for every edge of a group at once."""

    def decorator(fn: GroupForward) -> GroupForward:
        _GROUP_FORWARDS[op_type] = fn
        return fn

    return decorator


def group_forward(modules: Sequence[nn.Module], group: GroupInput, scale: torch.Tensor) -> torch.Tensor | None:
    """The outputs of ``modules`` (one per edge of the group) on the group's input, times ``scale``; see the module
    doc."""
    fn = _GROUP_FORWARDS.get(type(modules[0]))
    if fn is None:
        return scaled(torch.stack([module(group.x) for module in modules], dim=1), scale)
    return fn(modules, group, scale)


def scaled(out: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``out`` (``[N, E or 1, C, H, W]``) times each edge's weight: ``[N, E, C, H, W]``."""
    return scale.view(1, -1, 1, 1, 1) * out


def repeat_channels(x: torch.Tensor, times: int) -> torch.Tensor:
    """``x`` repeated ``times`` along channels, keeping channels-last memory channels-last."""
    if times == 1:
        return x
    if is_channels_last(x):
        return x.permute(0, 2, 3, 1).repeat(1, 1, 1, times).permute(0, 3, 1, 2)
    return x.repeat(1, times, 1, 1)


def group_batch_norm(x: torch.Tensor, norms: Sequence[nn.BatchNorm2d], scale: torch.Tensor | None = None,
                     updates: int = 1) -> torch.Tensor:
    """BatchNorm of ``x`` (``[N, E*C, H, W]``), edge ``e``'s channels by ``norms[e]`` and, with ``scale``, times
    ``scale[e]``; running statistics moved as ``updates`` calls on this batch would move them.

    Batch statistics are per channel, so one call over the stacked channels is the same as one call per edge.
    """
    first = norms[0]
    if len(norms) == 1 and scale is None and updates == 1:
        return first(x)
    if not all(norm.track_running_stats for norm in norms):
        out = torch.cat([norm(part) for norm, part in zip(norms, x.chunk(len(norms), dim=1))], dim=1)
        return out if scale is None else scaled(out.unflatten(1, (len(norms), -1)), scale).flatten(1, 2)
    channels = x.shape[1] // len(norms)
    weight = torch.cat([norm.weight for norm in norms]) if first.affine else None
    bias = torch.cat([norm.bias for norm in norms]) if first.affine else None
    if scale is not None:
        per_channel = scale.repeat_interleave(channels)
        weight = per_channel if weight is None else weight * per_channel
        bias = None if bias is None else bias * per_channel
    running_mean, running_var = _stacked_buffer(norms, "running_mean"), _stacked_buffer(norms, "running_var")
    momentum = first.momentum
    if first.training:
        _stacked_buffer(norms, "num_batches_tracked").add_(updates)
        if momentum is None:  # cumulative average over all batches seen
            momentum = updates / float(first.num_batches_tracked)
        else:  # k equal exponential updates: r <- (1-m)^k r + (1 - (1-m)^k) s
            momentum = 1.0 - (1.0 - momentum) ** updates
    return F.batch_norm(x, running_mean, running_var, weight, bias, first.training, momentum or 0.0, first.eps)


def _stacked_buffer(modules: Sequence[nn.Module], name: str) -> torch.Tensor:
    """One tensor holding buffer ``name`` of every module, each module's buffer a view into it.

    Linked on first use (and again after ``.to()`` or ``load_state_dict`` replaced the views), so that one
    in-place update, e.g. by ``F.batch_norm``, updates every module's buffer without a copy per module.
    """
    buffers = [getattr(module, name) for module in modules]
    base = buffers[0]._base
    size = buffers[0].numel()
    if base is not None and base.dim() == 1 and base.numel() == size * len(buffers) and all(
        buffer._base is base and buffer.storage_offset() == base.storage_offset() + index * size
        for index, buffer in enumerate(buffers)
    ):
        return base
    stacked = torch.cat([buffer.reshape(-1) for buffer in buffers])
    for index, module in enumerate(modules):
        module._buffers[name] = stacked[index * size:(index + 1) * size].view_as(buffers[index])
    return stacked


def stacked_conv(x: torch.Tensor, convs: Sequence[nn.Conv2d], shared_input: bool = False) -> torch.Tensor:
    """The convs of the ``E`` edges (same settings) as one conv whose output channels stack the edges' outputs.

    ``shared_input``: every conv reads all of ``x``; otherwise ``x`` stacks the edges' inputs along channels (as
    :attr:`GroupInput.repeated_relu` does) and edge ``e``'s conv reads its own block.
    """
    first = convs[0]
    weight = first.weight if len(convs) == 1 else torch.cat([conv.weight for conv in convs])
    groups = first.groups if shared_input else first.groups * len(convs)
    if (first.bias is None and first.padding_mode == "zeros" and pays_off(x, first.dilation)
            and is_depthwise(x, weight, first.padding, first.dilation, groups)):
        return depthwise_conv2d(x, weight, first.stride, first.padding, first.dilation)
    if len(convs) == 1:
        return first(x)
    return F.conv2d(x, weight, None, first.stride, first.padding, first.dilation, groups)


def _separable_units(x: torch.Tensor, units: Sequence[Sequence[nn.Module]], scale: torch.Tensor, updates: int
                     ) -> torch.Tensor:
    """Run the (ReLU, depthwise, 1x1, BN) units of every edge; ``x`` is already ReLU'd for the first one."""
    last = len(units[0]) - 4
    for index in range(0, last + 4, 4):
        if index:
            x = torch.relu(x)
        x = stacked_conv(x, [unit[index + 1] for unit in units])
        x = stacked_conv(x, [unit[index + 2] for unit in units])
        x = group_batch_norm(x, [unit[index + 3] for unit in units], scale if index == last else None, updates)
    return x


@register_group_forward(Zero)
def _zero_group(modules: Sequence[Zero], group: GroupInput, scale: torch.Tensor) -> None:
    return None


@register_group_forward(Identity)
def _identity_group(modules: Sequence[Identity], group: GroupInput, scale: torch.Tensor) -> torch.Tensor:
    x = group.x.unsqueeze(1)
    if modules[0].dropout and modules[0].training:  # one mask per edge, as edge by edge
        x = F.dropout(x.expand(-1, len(modules), *x.shape[2:]), modules[0].dropout)
    return scaled(x, scale)


@register_group_forward(PoolBN)
def _pool_bn_group(modules: Sequence[PoolBN], group: GroupInput, scale: torch.Tensor) -> torch.Tensor:
    """Same input, same pool, BNs with equal statistics: one output for all edges."""
    source = modules[0][1]
    out = group_batch_norm(modules[0][0](group.x), [source], updates=group.updates)
    for module in modules[1:]:  # every edge's BN shares the first one's buffers: one update moves them all
        for name, buffer in source.named_buffers():
            if module[1]._buffers[name] is not buffer:
                module[1]._buffers[name] = buffer
    return scaled(out.unsqueeze(1), scale)


@register_group_forward(SepConv)
@register_group_forward(DilConv)
def _separable_group(modules: Sequence[SepConv | DilConv], group: GroupInput, scale: torch.Tensor) -> torch.Tensor:
    out = _separable_units(group.repeated_relu, [module.op for module in modules], scale, group.updates)
    return out.unflatten(1, (len(modules), -1))


@register_group_forward(FactorizedReduce)
def _factorized_reduce_group(modules: Sequence[FactorizedReduce], group: GroupInput, scale: torch.Tensor
                             ) -> torch.Tensor:
    edges = len(modules)
    relu = group.relu
    shifted = F.pad(relu, (0, 1, 0, 1))[:, :, 1:, 1:]
    first = stacked_conv(relu, [module.conv_1 for module in modules], shared_input=True).unflatten(1, (edges, -1))
    second = stacked_conv(shifted, [module.conv_2 for module in modules], shared_input=True).unflatten(1, (edges, -1))
    out = group_batch_norm(torch.cat([first, second], dim=2).flatten(1, 2), [module.bn for module in modules], scale,
                           group.updates)
    return out.unflatten(1, (edges, -1))

