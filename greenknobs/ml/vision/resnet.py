"""A small ResNet-style CNN: a conv stem, stages of basic residual blocks (two 3x3 conv + batch norm,
identity or 1x1 projection shortcut), global average pooling and a linear head.

Blocks live in one ``nn.ModuleDict`` per stage keyed ``b0``, ``b1``, ...; removing a block deletes
its key, so the remaining blocks keep their names (``stages.1.b1.conv1``) and evidence read off a
served model -- even a quantised FX graph of it -- names the same blocks as the pruning report.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    ``conv1``'s output channels (the block's *inner* width) are what channel pruning removes: they
    are private to the block, so the residual stream and every other block keep their shapes."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    @property
    def removable(self) -> bool:
        """An identity shortcut: without its residual branch the block is the identity, shapes unchanged."""
        return self.shortcut is None

    @property
    def inner_width(self) -> int:
        return self.conv1.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + skip)


class SmallResNet(nn.Module):
    """``widths[s]`` channels and ``blocks[s]`` basic blocks in stage s; every stage after the
    first halves the resolution in its first block (stride 2, projection shortcut)."""

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int], blocks: Sequence[int]):
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError("widths and blocks need one entry per stage")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        self.stages = nn.ModuleList()
        cin = widths[0]
        for s, (width, n) in enumerate(zip(widths, blocks)):
            stage = nn.ModuleDict()
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                stage[f"b{b}"] = BasicBlock(cin, width, width, stride)
                cin = width
            self.stages.append(stage)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            for block in stage.values():
                x = block(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def blocks(model: nn.Module) -> Iterator[tuple[str, BasicBlock]]:
    """(``s{stage}.{key}``, block) for every block, in forward order (stages numbered from 1)."""
    for s, stage in enumerate(model.stages):
        for key, block in stage.items():
            yield f"s{s + 1}.{key}", block


def block_path(block_id: str) -> str:
    """``s2.b1`` -> the module path ``stages.1.b1``."""
    stage, key = block_id.split(".")
    return f"stages.{int(stage[1:]) - 1}.{key}"


def stage_of(block_id: str) -> int:
    return int(block_id.split(".")[0][1:])


def inner_widths(model: nn.Module) -> dict[str, int]:
    """Block id -> inner width, read off the module (the pruning report; evidence reads tensors)."""
    return {name: b.inner_width for name, b in blocks(model)}


def removable_count(blocks_per_stage: Sequence[int]) -> int:
    """Blocks with an identity shortcut in a fresh model of this shape (the ones block removal may
    take): every block but the first of each later stage, which changes width and resolution."""
    return sum(n - (1 if s > 0 else 0) for s, n in enumerate(blocks_per_stage))


MAX_STAGES = 4  # one channel-pruning setting per stage: model.channel_prune_stage1..4
