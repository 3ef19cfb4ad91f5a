"""Images as tensors: stack, normalise with fixed statistics, resize to the trial's input resolution."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def channel_stats(pixels: Sequence[Any]) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of (C, H, W) arrays (all the same size)."""
    x = torch.stack([torch.as_tensor(p, dtype=torch.float32) for p in pixels])
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return x.mean(dim=(0, 2, 3)).tolist(), std.tolist()


def resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, resolution, resolution): bilinear, anti-aliased when shrinking."""
    if tuple(x.shape[-2:]) == (resolution, resolution):
        return x
    shrinking = resolution < min(x.shape[-2:])
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=shrinking)


def to_tensors(rows: Sequence[dict[str, Any]], resolution: int, mean: Sequence[float],
               std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows {"pixels": (C, H, W) array, "label": int} -> normalised images at ``resolution`` and labels."""
    if not rows:
        return torch.zeros((0, len(mean), resolution, resolution)), torch.zeros((0,), dtype=torch.long)
    x = torch.stack([torch.as_tensor(r["pixels"], dtype=torch.float32) for r in rows])
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return resize(x, resolution).contiguous(), torch.tensor([int(r["label"]) for r in rows], dtype=torch.long)
