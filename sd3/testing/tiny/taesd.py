"""TAESD3 checkpoints with random non-zero weights, in diffusers' layout and in the original's, and the
diffusers `AutoencoderTiny` reference built from the same tensors."""

from __future__ import annotations

import re

import torch

from sd3.testing.tiny.random import RandomTensors
from sd3.vae.taesd import TinyAutoencoder


def taesd_state_dict(seed: int = 0, width: int = 64) -> dict[str, torch.Tensor]:
    """Every TAESD3 tensor (decoder and encoder) under diffusers' names, random and non-zero.

    `width` below 64 makes a narrower model for fast tests; 64 is the real one."""
    r = RandomTensors(seed)
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in TinyAutoencoder(width=width).state_dict().items()}
    return {name: r.weight(*shape) if len(shape) > 1 else r.bias(shape[0]) for name, shape in shapes.items()}


def original_decoder(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The decoder alone in the original's `nn.Sequential` names (taesd3_decoder): index 0 is the clamp."""
    out = {}
    for name, tensor in state_dict.items():
        found = re.fullmatch(r"decoder\.layers\.(\d+)\.(.+)", name)
        if found:
            out[f"{int(found[1]) + 1}.{found[2]}"] = tensor
    return out


def diffusers_taesd(state_dict: dict[str, torch.Tensor], width: int = 64):
    """diffusers' `AutoencoderTiny` configured as madebyollin/taesd3, holding `state_dict`."""
    from diffusers import AutoencoderTiny

    model = AutoencoderTiny(latent_channels=16, encoder_block_out_channels=(width,) * 4,
                            decoder_block_out_channels=(width,) * 4, num_encoder_blocks=(1, 3, 3, 3),
                            num_decoder_blocks=(3, 3, 3, 1), act_fn="relu", upsample_fn="nearest")
    model.load_state_dict(state_dict)
    return model.eval()
