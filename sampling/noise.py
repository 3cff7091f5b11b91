"""Initial noise: one seeded float32 draw per image on the CPU, then moved to the device.

Drawing on the CPU in float32 makes one seed give the same start on any device and in any model
dtype (bfloat16 randn on the CPU would clip the tails). Image k of a batch uses its own seed, so
any single image can be reproduced alone (Candle draws on the device; Stability as here).
"""

from __future__ import annotations

import torch


def initial_noise(seeds: list[int], channels: int, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(len(seeds), channels, height, width) float32 standard normal noise, one generator per seed."""
    draws = [
        torch.randn(channels, height, width, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
        for seed in seeds
    ]
    return torch.stack(draws).to(device)
