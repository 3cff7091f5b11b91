"""Random, non-zero tensors scaled so that activations stay of order one."""

from __future__ import annotations

import torch


class RandomTensors:
    """A seeded source of weights: `weight(out, in)` ~ N(0, 1/in), `bias`/`vector` ~ N(0, 0.1^2)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def normal(self, *shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator) * std + mean

    def weight(self, *shape: int) -> torch.Tensor:
        fan_in = 1
        for size in shape[1:]:
            fan_in *= size
        return self.normal(*shape, std=fan_in**-0.5)

    def bias(self, size: int) -> torch.Tensor:
        return self.normal(size, std=0.1)

    def norm_weight(self, size: int) -> torch.Tensor:
        """A learned norm scale near one but not one, so a missing multiply shows."""
        return self.normal(size, std=0.1, mean=1.0)


class MetaTensors(RandomTensors):
    """The same API, producing shape-only tensors on the meta device (for full-size layouts)."""

    def __init__(self) -> None:
        pass

    def normal(self, *shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
        return torch.empty(*shape, device="meta")
