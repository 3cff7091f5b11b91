"""Loading an MMDiT from an official single-file checkpoint or a state dict.

The model is built on the `meta` device from a config inferred from tensor shapes, then filled
strictly with tensors read from the memory-mapped file (sd3/loading.py), so peak memory
stays near one copy of the weights in the target dtype.
"""

from __future__ import annotations

import torch

from sd3.checkpoint import CheckpointLike, open_checkpoint
from sd3.devices import resolve_device, resolve_dtype
from sd3.loading import load_strict
from sd3.mmdit.config import Config
from sd3.mmdit.model import MMDiT

PREFIX = "model.diffusion_model."


def load_mmdit(
    source: CheckpointLike,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
) -> MMDiT:
    """Load the MMDiT of any SD3 / SD3.5 variant, its architecture read off the checkpoint.

    Args:
        source: a `.safetensors` or `.gguf` path, or a dict of tensors. Keys may carry the
            `model.diffusion_model.` prefix (all-in-one checkpoints, whose VAE and text-encoder
            tensors are then ignored) or not (a bare MMDiT state dict). Tensors an fp8 or GGUF
            file stores quantised stay so in memory and are dequantised per layer (sd3/quant/).
        dtype: the compute dtype (float32, float16 or bfloat16, or their names); tensors stored in
            16 or 32 bits are converted to it.
        device: where the weights go ("cpu", "cuda", "cuda:1", ...).

    Returns:
        The model in eval mode; `model.config` says which architecture was found.

    Raises:
        ModelLoadingError: missing, unreadable or pickle-based file; missing, unexpected or
            mis-shaped MMDiT keys (the first few are listed, with a count).
        DeviceError: the device or dtype is not available.
    """
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    with open_checkpoint(source) as checkpoint:
        tensors = checkpoint.component(PREFIX)
        config = Config.from_state_dict(tensors.shapes())
        with torch.device("meta"):
            model = MMDiT(config)
        return load_strict(model, tensors, dtype=dtype, device=device, what="MMDiT")
