"""Tiny fp8 and GGUF files written by sd3.quant.writer, and independent dequantised references for them."""

import numpy as np
import torch
from safetensors import safe_open

from sd3.mmdit import Config


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def mmdit_inputs(config: Config, batch: int = 2, size: int = 8, context_len: int = 5):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 16, size, size, generator=g), torch.tensor([900.0, 250.0][:batch]),
            torch.randn(batch, config.adm_in_channels, generator=g),
            torch.randn(batch, context_len, config.context_dim, generator=g))


def fp8_reference(path) -> dict[str, torch.Tensor]:
    """Every tensor of an fp8 file as float32, dequantised here by hand: fp8 · scale_weight / weight_scale."""
    with safe_open(str(path), "pt") as f:
        raw = {k: f.get_tensor(k) for k in f.keys()}
    out = {}
    for key, value in raw.items():
        layer, _, suffix = key.rpartition(".")
        if suffix in ("scale_weight", "weight_scale", "scale_input", "input_scale", "scaled_fp8") or key == "scaled_fp8":
            continue
        scale = raw.get(f"{layer}.scale_weight", raw.get(f"{layer}.weight_scale")) if suffix == "weight" else None
        out[key] = value.float() * scale if scale is not None else value.float()
    return out


def gguf_reference(path, rename=lambda name: name) -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF file as float32, dequantised by the gguf package's numpy code."""
    import gguf

    out = {}
    for t in gguf.GGUFReader(path).tensors:
        values = gguf.quants.dequantize(np.array(t.data), t.tensor_type)
        out[rename(t.name)] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(
            tuple(int(d) for d in reversed(t.shape)))
    return out
