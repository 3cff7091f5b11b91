"""Choosing a device and a dtype from what a caller asked for and what the machine has.

With no device named, the choice is CUDA, then Apple's Metal (MPS), then the CPU, the order Candle's
`device()` helper follows. The default dtype follows the device:

| device | default dtype | why |
|---|---|---|
| CUDA | bfloat16 | tensor cores; the range of float32, so nothing overflows |
| MPS | float16 | every Apple GPU and macOS release that torch supports runs it natively (bfloat16 needs macOS 14); T5 keeps its residual stream in float32 so it does not overflow |
| CPU | float32 | the CPU's fastest exact path, and the dtype the parity tests use |
"""

from __future__ import annotations

import torch

from sd3.errors import DeviceError

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
DEFAULT_DTYPES = {"cuda": torch.bfloat16, "mps": torch.float16, "cpu": torch.float32}


def _mps_available() -> bool:
    return torch.backends.mps.is_available()


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to run on: the one asked for, else CUDA, else MPS, else the CPU.

    Raises:
        DeviceError: the device is malformed or not available here.
    """
    if device is None:
        chosen = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
        return torch.device(chosen)
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DeviceError(f"'{device}' is not a device name (use 'cpu', 'cuda', 'cuda:N' or 'mps')") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError('CUDA was requested but no CUDA device is available; use `device="cpu"`')
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(
                f"{resolved} was requested but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif resolved.type == "mps" and not _mps_available():
        raise DeviceError('MPS was requested but is not available on this machine; use `device="cpu"`')
    return resolved


def default_dtype(device: torch.device) -> torch.dtype:
    """The dtype a pipeline on `device` uses unless told otherwise (table in the module docstring)."""
    return DEFAULT_DTYPES.get(device.type, torch.float32)


def describe(device: torch.device) -> str:
    """One line naming the device, for the log: its model and memory on CUDA, its threads on the CPU."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        bf16 = "supported" if torch.cuda.is_bf16_supported() else "not supported"
        return f"device {device}: {props.name}, {props.total_memory / 2**30:.1f} GiB, bf16 {bf16}"
    if device.type == "mps":
        return "device mps: Apple Metal"
    return f"device {device}, {torch.get_num_threads()} threads"


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A floating-point torch dtype from a dtype or a name such as 'bf16' or 'float32'.

    Raises:
        DeviceError: the name is unknown or the dtype is not a supported floating type.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise DeviceError(f"`dtype` {dtype} is not supported; use float32, float16 or bfloat16")
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise DeviceError(f"unknown `dtype` '{dtype}'; use float32, float16 or bfloat16") from None
