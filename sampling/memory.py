"""Estimating what each pipeline stage needs, and refusing early when the device cannot hold it.

Weights are counted from the checkpoint's tensor shapes (nothing is read) in the target dtype;
activations from the image size with rough, deliberately generous factors. The point is to fail
before loading with a message that says how to fit, not to predict the last megabyte.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Sequence
from pathlib import Path

import torch

from sd3 import clip, mmdit
from sd3 import vae as vae_lib
from sd3.checkpoint import open_checkpoint
from sd3.tensor_source import TensorSource
from sd3.errors import DeviceError

GIB = 2**30


def weight_bytes(tensors: TensorSource, dtype: torch.dtype) -> int:
    """Bytes of a component's tensors once loaded in `dtype` (quantised ones at their stored size)."""
    return sum(tensors.stored_bytes(key, dtype) for key in tensors.keys())


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


class StageMemory:
    """One pipeline's memory arithmetic: each model's weights (read off the file headers, in the
    compute dtype), each stage's activations for a call, and the checks built on them.

    `resident` arguments are the names of the models already loaded: they cost nothing more.
    """

    def __init__(self, files, dtype: torch.dtype, device: torch.device, reference, hidden_size: int) -> None:
        self.dtype, self.device, self.reference, self.hidden_size = dtype, device, reference, hidden_size
        parts = {"clip_l": (files.clip_l, clip.CLIP_L_PREFIX), "clip_g": (files.clip_g, clip.CLIP_G_PREFIX),
                 "t5": (files.t5xxl, clip.T5_PREFIX), "mmdit": (files.checkpoint, mmdit.PREFIX),
                 "vae": (files.vae, vae_lib.PREFIX), "taesd": (files.taesd, "")}
        self.weights = {}  # name -> bytes
        for name, (path, prefix) in parts.items():
            if path is not None:
                with open_checkpoint(path) as checkpoint:
                    self.weights[name] = weight_bytes(checkpoint.component(prefix), dtype)

    def activations(self, options, context_tokens: int) -> dict[str, int]:
        """Bytes each stage's activations need for a call with `options` (a GenerationOptions)."""
        cfg_batch = 2 if (options.cfg != 1.0 or self.reference.uncond_at_cfg_one) else 1
        tokens = context_tokens + (options.height // 16) * (options.width // 16)
        return {
            "text": 0,
            "mmdit": mmdit_activation_bytes(cfg_batch * options.batch_size, tokens, self.hidden_size, self.dtype),
            "vae": self.decode_bytes(options.batch_size, options.height, options.width, options.tile_size),
        }

    def decode_bytes(self, batch: int, height: int, width: int, tile_size: int | None, tiny: bool = False) -> int:
        """Bytes the VAE's activations need for `batch` images of height x width pixels; tiled, they
        span one tile (of the whole batch). `tiny`: TAESD3's, whose feature maps have 64 channels
        where the VAE's have 128 at full resolution."""
        if tile_size is not None:
            height, width = min(height, 8 * tile_size), min(width, 8 * tile_size)
        return vae_activation_bytes(batch, height, width, self.dtype) // (2 if tiny else 1)

    def fits_together(self, keep: str, resident: Container[str], options, context_tokens: int,
                      extra: Container[str] = ()) -> bool:
        """Whether a call keeps its models after their stage: `keep`, or for "auto" the memory check
        (every model's weights, the ControlNets among them only when in `extra`, plus the largest
        stage's activations at `options`; None: none)."""
        if keep != "auto":
            return keep == "all"
        to_load = sum(size for name, size in self.weights.items()
                      if name not in resident and (not name.startswith("controlnet:") or name in extra))
        activation = 0 if options is None else max(self.activations(options, context_tokens).values())
        free = available_bytes(self.device)
        return free is not None and to_load + activation <= free

    def check(self, stage: str, names: Sequence[str], resident: Container[str], activation: int, advice: str) -> None:
        """Refuse a stage whose models (those not yet loaded) and activations do not fit."""
        needed = sum(self.weights.get(n, 0) for n in names if n not in resident) + activation
        check_fits(stage, needed, self.device, advice)

    def largest_batch(self, options, context_tokens: int, resident: Container[str], cap: int) -> int:
        """The largest batch, at most `cap`, whose denoising and decoding fit (1 when free memory is unknown)."""
        free = available_bytes(self.device)
        if free is None:
            return 1
        pending = {name: 0 if name in resident else size for name, size in self.weights.items()}
        best = 1
        for batch in range(1, cap + 1):
            needed = self.activations(dataclasses.replace(options, batch_size=batch), context_tokens)
            if max(pending["mmdit"] + needed["mmdit"], pending["vae"] + needed["vae"]) > free:
                break
            best = batch
        return best
