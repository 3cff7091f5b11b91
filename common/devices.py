"""Choosing a device and a dtype from what a user asked for and what the machine has."""

from __future__ import annotations

import torch

from common.errors import DeviceError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "f32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "f16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to run on: the one asked for, else CUDA when available, else CPU.

    Raises:
        DeviceError: the device is malformed or not available here.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DeviceError(f"'{device}' is not a device name (use 'cpu', 'cuda' or 'cuda:N')") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was requested but no CUDA device is available; use the CPU (--cpu)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(
                f"{resolved} was requested but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("MPS was requested but is not available on this machine; use the CPU (--cpu)")
    return resolved


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A floating-point torch dtype from a dtype or a name such as 'bf16' or 'float32'.

    Raises:
        DeviceError: the name is unknown or the dtype is not a supported floating type.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise DeviceError(f"{dtype} is not supported; use float32, float16 or bfloat16")
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise DeviceError(f"unknown dtype '{dtype}'; use float32, float16 or bfloat16") from None
