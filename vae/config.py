"""VAE configuration: the SD3 preset and inference from a checkpoint (docs/reference.md §4)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from sd3.checkpoint import shape_lookup


@dataclass(frozen=True)
class VAEConfig:
    """An AutoencoderKL's shape and the SD3 latent scaling (diffusers' `AutoencoderKL` config names)."""

    in_channels: int = 3  # image channels
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2  # resnets per encoder block; decoder blocks have one more
    norm_num_groups: int = 32
    scaling_factor: float = 1.5305  # SD3: model latents = (vae latents - shift) * scale
    shift_factor: float = 0.0609

    @property
    def downscale(self) -> int:
        """Image pixels per latent pixel (8 for SD3)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def sd3(cls) -> VAEConfig:
        return cls()

    @classmethod
    def from_state_dict(cls, shapes: Mapping[str, object]) -> VAEConfig:
        """Infer the shape from checkpoint names (original layout, no `first_stage_model.` prefix).

        The group count and the latent scaling cannot be read off shapes: they keep SD3's values.

        Raises:
            ModelLoadingError: a tensor the inference needs is absent.
        """
        shape, need = shape_lookup(shapes, "an SD3 VAE", "first_stage_model.")
        def indices(pattern: str) -> list[int]:
            return sorted({int(m.group(1)) for name in shape if (m := re.match(pattern, name))})

        levels = indices(r"encoder\.down\.(\d+)\.")
        return cls(
            in_channels=need("encoder.conv_in.weight")[1],
            out_channels=need("decoder.conv_out.weight")[0],
            latent_channels=need("decoder.conv_in.weight")[1],
            block_out_channels=tuple(need(f"encoder.down.{i}.block.0.conv1.weight")[0] for i in levels),
            layers_per_block=len(indices(r"encoder\.down\.0\.block\.(\d+)\.")),
        )
