"""Loading TAESD3 from the `.safetensors` files users have, in either layout, never from a pickle.

| layout | where it comes from | names |
|---|---|---|
| diffusers `AutoencoderTiny` | `madebyollin/taesd3` on the Hub, `diffusion_pytorch_model.safetensors` | `decoder.layers.N.…`, `encoder.layers.N.…` |
| the original's `nn.Sequential` | madebyollin/taesd's `taesd3_decoder.pth` / `taesd3_encoder.pth`, converted to safetensors | `N.…` |

The original decoder starts with its clamp at index 0, so its layer N is diffusers' N - 1; the
encoder's indices are the same in both. A `.pth` file is refused: unpickling runs arbitrary code,
and the same weights are published as `.safetensors`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from sd3.checkpoint import CheckpointLike, open_checkpoint
from sd3.devices import resolve_device, resolve_dtype
from sd3.errors import ModelLoadingError
from sd3.loading import load_strict
from sd3.tensor_source import TensorSource
from sd3.vae.taesd import LATENT_CHANNELS, TinyAutoencoder

_INDEX = re.compile(r"(\d+)\.(.+)")


def load_taesd(
    source: CheckpointLike, *, dtype: torch.dtype | str = torch.float32, device: torch.device | str = "cpu"
) -> TinyAutoencoder:
    """Load TAESD3 (its decoder, and its encoder where the file holds one).

    Raises:
        ModelLoadingError: a missing, pickle-based or unreadable file; a TAESD for 4-channel latents
            (SD 1.x, SDXL); names in neither layout; missing, unexpected or mis-shaped tensors.
    """
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".pth":
        raise ModelLoadingError(
            f"{source} is a pickle (.pth), which this project never loads: unpickling can run arbitrary code. "
            "Use the same weights as .safetensors: madebyollin/taesd3's diffusion_pytorch_model.safetensors"
        )
    with open_checkpoint(source) as checkpoint:
        tensors, has_encoder = _diffusers_view(checkpoint)
        first = tensors.shape("decoder.layers.0.weight") if "decoder.layers.0.weight" in tensors else None
        if first is None:
            raise ModelLoadingError(f"{checkpoint.description} holds no TAESD decoder (no first convolution)")
        if first[1] != LATENT_CHANNELS:
            raise ModelLoadingError(
                f"{checkpoint.description} is a TAESD for {first[1]}-channel latents (SD 1.x or SDXL); SD3 needs "
                f"TAESD3 ({LATENT_CHANNELS} channels, madebyollin/taesd3)"
            )
        with torch.device("meta"):
            model = TinyAutoencoder(first[1], first[0], encoder=has_encoder)
        return load_strict(model, tensors, dtype=dtype, device=device, what="TAESD3")


def _diffusers_view(checkpoint: TensorSource) -> tuple[TensorSource, bool]:
    """The file's tensors under diffusers' names, and whether an encoder is among them."""
    keys = checkpoint.keys()
    if any(k.startswith(("decoder.layers.", "encoder.layers.")) for k in keys):
        return checkpoint, any(k.startswith("encoder.layers.") for k in keys)
    matches = [_INDEX.fullmatch(k) for k in keys]
    if not keys or not all(matches):
        raise ModelLoadingError(
            f"{checkpoint.description} is not a TAESD file: expected diffusers' 'decoder.layers.N' names or the "
            f"original's 'N.' names, found {keys[:3]}"
        )
    if min(int(m[1]) for m in matches) != 1:  # the original decoder's index 0 is its clamp, which has no weights
        raise ModelLoadingError(
            f"{checkpoint.description} holds the TAESD3 encoder alone; give the decoder file (taesd3_decoder)"
        )
    return checkpoint.renamed({m[0]: f"decoder.layers.{int(m[1]) - 1}.{m[2]}" for m in matches}), False
