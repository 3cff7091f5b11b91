"""Image tensors in [-1, 1] <-> 8-bit pixels (numpy arrays and PIL images)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sd3.errors import ConfigurationError, VAEDecodingError

ROUNDING = ("round", "truncate")


def to_uint8(images: torch.Tensor, rounding: str = "round") -> np.ndarray:
    """(b, 3, H, W) in [-1, 1] -> (b, H, W, 3) uint8: clamp((x + 1) * 127.5, 0, 255), rounded as diffusers
    does; or with `rounding="truncate"`, 255 · clamp((x + 1) / 2, 0, 1) cut to an integer, as ComfyUI's
    VAE decode and SaveImage compute it (comfy/sd.py `process_output`, nodes.py)."""
    if rounding not in ROUNDING:
        raise ConfigurationError(f"unknown `rounding` {rounding!r}; choose one of {', '.join(ROUNDING)}")
    if not torch.isfinite(images).all():
        raise VAEDecodingError(
            "the decoded image contains NaN or inf; the usual cause is float16 overflow in the VAE or "
            "the T5 encoder: run them in float32 or bfloat16"
        )
    if rounding == "truncate":
        pixels = ((images.float() + 1.0) / 2.0).clamp(0, 1) * 255.0  # the uint8 cast below truncates
    else:
        pixels = ((images.float() + 1) * 127.5).clamp(0, 255).round()
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: torch.Tensor, rounding: str = "round") -> list[Image.Image]:
    """(b, 3, H, W) in [-1, 1] -> b RGB PIL images (`rounding` as for `to_uint8`)."""
    return [Image.fromarray(array) for array in to_uint8(images, rounding)]


def from_pil(images: Image.Image | list[Image.Image]) -> torch.Tensor:
    """One or several same-size PIL images -> (b, 3, H, W) float32 in [-1, 1]."""
    images = [images] if isinstance(images, Image.Image) else images
    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0
