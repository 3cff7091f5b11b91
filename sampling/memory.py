"""Estimating what each pipeline stage needs, and refusing early when the device cannot hold it.

Weights are counted from the checkpoint's tensor shapes (nothing is read) in the target dtype;
activations from the image size with rough, deliberately generous factors. The point is to fail
before loading with a message that says how to fit, not to predict the last megabyte.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from sd3.checkpoint import TensorSource
from sd3.errors import DeviceError

GIB = 2**30


def weight_bytes(tensors: TensorSource, dtype: torch.dtype) -> int:
    """Bytes of a component's tensors once converted to `dtype`."""
    size = torch.empty((), dtype=dtype).element_size()
    return sum(math.prod(shape) for shape in tensors.shapes().values()) * size


def mmdit_activation_bytes(batch: int, tokens: int, hidden: int, dtype: torch.dtype) -> int:
    """One forward pass at the CFG batch: ~16 tensors of (batch, tokens, hidden) alive at once."""
    return 16 * batch * tokens * hidden * torch.empty((), dtype=dtype).element_size()


def vae_activation_bytes(batch: int, height: int, width: int, dtype: torch.dtype) -> int:
    """Decoding: ~8 feature maps of 128 channels at full resolution alive at once."""
    return 8 * batch * 128 * height * width * torch.empty((), dtype=dtype).element_size()


def available_bytes(device: torch.device) -> int | None:
    """Free memory on the device (MemAvailable on Linux for the CPU); None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if device.type == "cpu" and meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def check_fits(stage: str, needed: int, device: torch.device, advice: str) -> None:
    """Raise DeviceError when `needed` bytes exceed what `device` has free.

    Args:
        advice: how to fit, e.g. "use --dtype bf16, --no-t5 or a smaller --height/--width".
    """
    free = available_bytes(device)
    if free is not None and needed > free:
        raise DeviceError(
            f"the {stage} stage needs about {needed / GIB:.1f} GiB but only {free / GIB:.1f} GiB are free "
            f"on {device}; {advice}"
        )
