"""The Auto-DeepLab retrain network of a genotype: TF ``hnasnet`` with DeepLabV3+'s ASPP and decoder.

* Stem 64 (s2) / 64 / 128 (s2); the cell along the path with ``F*2^level`` filters per block.
* Cell inputs as in TF ``NASBaseCell``: ``H^{l-1}`` (bilinearly resized first when the path goes
  up) through ReLU-1x1-BN; ``H^{l-2}`` is the output two cells back whatever its stride (for cell 0
  the stem's stride-2 output, for cell 1 its stride-4 output), resized to that size, with
  ReLU-1x1-BN only on a channel mismatch; ops on the cell inputs are strided when the path goes down.
* A ReLU after the last cell, :class:`nasplat.ASPP` (five branches of 256, full 3x3 convs, rates
  6/12/18 scaled to the last stride) and the DeepLabV3+ decoder (stride-4 features of Cell_2 for
  the paper path, 48-channel projection, two full 3x3 convs of 256).

With :data:`PAPER_GENOTYPE` and 19 classes this counts 10,147,427 / 21,622,451 / 44,424,691
parameters for F = 20/32/48 (paper: 10.15M / 21.62M / 44.42M).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nasplat import ASPP, DiscreteCell, ReLUConvBN, conv_bn_relu, resize_to

from search_spaces.autodeeplab.genotype import AutoDeepLabGenotype
from search_spaces.autodeeplab.paths import level_sizes
from search_spaces.autodeeplab.stem import Stem


class RetrainCell(nn.Module):
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
        self.stem = Stem(stem_channels)
        outputs = [stem_channels[1], stem_channels[2]]  # TF cell_outputs: stride 2, stride 4
        self.cells = nn.ModuleList()
        previous = 0  # the stem's level
        for level in self.levels:
            C = F * 2**level
            stride = 2 if level == previous + 1 else 1
            self.cells.append(RetrainCell(genotype, outputs[-2], outputs[-1], C, stride))
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
        self.aspp = ASPP(outputs[-1], self.aspp_rates, aspp_channels, dropout)
        self.low_level = conv_bn_relu(outputs[low_level_cell + 2], low_level_channels, 1)
        self.decoder = nn.Sequential(
            conv_bn_relu(aspp_channels + low_level_channels, decoder_channels, 3),
            conv_bn_relu(decoder_channels, decoder_channels, 3),
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
