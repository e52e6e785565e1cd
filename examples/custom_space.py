"""A user-defined search space, a chain of mixed ops: nasplat search --space examples/custom_space.py:chain"""
import dataclasses
from typing import ClassVar
import torch
from torch import nn

import nasplat

OPS = ("none", "skip_connect", "sep_conv_3x3", "dil_conv_3x3", "avg_pool_3x3")


@dataclasses.dataclass(frozen=True)
class ChainGenotype(nasplat.Genotype):
    space: ClassVar[str] = "chain"
    ops: tuple  # one op per link of the chain
    def validate(self) -> None:
        for i, op in enumerate(self.ops):
            if op not in OPS[1:]:
                raise nasplat.GenotypeError(f"ops[{i}]", f"{op!r} is not one of {OPS[1:]}")


class ChainNet(nn.Module):
    """Stem, one op per link (a MixedOp in the supernet), 1x1 classifier at full resolution."""
    def __init__(self, links: list[nn.Module], num_classes: int, C: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.links = nn.ModuleList(links)
        self.head = nn.Conv2d(C, num_classes, 1)

    def forward(self, x: torch.Tensor, weights=None) -> torch.Tensor:
        h = self.stem(x)
        for i, link in enumerate(self.links):
            h = link(h) if weights is None else link(h, weights[i])
        return self.head(h)


class ChainSupernet(nasplat.Supernet):
    def __init__(self, num_classes: int, C: int = 8, depth: int = 3) -> None:
        super().__init__()
        self.chain = ChainNet([nasplat.MixedOp(C, 1, OPS) for _ in range(depth)], num_classes, C)
        self.add_arch_parameter("alpha", 1e-3 * torch.randn(depth, len(OPS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.chain(x, torch.softmax(self.arch["alpha"], dim=-1))


@nasplat.register_space
class ChainSpace(nasplat.SearchSpace):
    name, ops, genotype_type = "chain", OPS, ChainGenotype

    def supernet(self, num_classes: int, **options) -> ChainSupernet:
        return ChainSupernet(num_classes, **options)

    def decode(self, arch) -> ChainGenotype:  # strongest op other than 'none' on every link
        best = torch.softmax(arch["alpha"].detach(), dim=-1)[:, 1:].argmax(dim=-1)
        return ChainGenotype(ops=[OPS[1 + int(k)] for k in best])

    def build(self, genotype: ChainGenotype, num_classes: int, C: int = 8) -> ChainNet:
        return ChainNet([nasplat.build_op(op, C, 1) for op in genotype.ops], num_classes, C)
