"""Loading the SD3 VAE from an all-in-one checkpoint (`first_stage_model.`) or a standalone file."""

from __future__ import annotations

import functools

import torch

from sd3.checkpoint import CheckpointLike, open_checkpoint
from sd3.devices import resolve_device, resolve_dtype
from sd3.loading import load_strict
from sd3.vae.config import VAEConfig
from sd3.vae.model import AutoEncoderKL
from sd3.vae.rename import checkpoint_name

PREFIX = "first_stage_model."


def load_vae(
    source: CheckpointLike,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
) -> AutoEncoderKL:
    """Load the SD3 AutoencoderKL, its shape read off the checkpoint.

    Args:
        source: a `.safetensors` path or a dict of tensors in the original (LDM) layout, with the
            `first_stage_model.` prefix (all-in-one and SD3.5 files; other components ignored) or
            without it (a standalone VAE file).
        dtype: float32, float16 or bfloat16 (or their names).
        device: where the weights go.

    Raises:
        ModelLoadingError: missing or unreadable file; missing, unexpected or mis-shaped keys,
            each named as the checkpoint names it and as the model does.
        DeviceError: the device or dtype is not available.
    """
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    with open_checkpoint(source) as checkpoint:
        tensors = checkpoint.component(PREFIX)
        config = VAEConfig.from_state_dict(tensors.shapes())
        with torch.device("meta"):
            model = AutoEncoderKL(config)
        rename = functools.partial(checkpoint_name, num_blocks=len(config.block_out_channels))
        return load_strict(model, tensors, dtype=dtype, device=device, what="VAE", to_checkpoint_name=rename)
