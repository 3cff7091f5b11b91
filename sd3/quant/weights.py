"""Quantised weights that stay quantised in memory and are dequantised per layer, at forward time.

A file may store a tensor in 8-bit floating point (fp8, optionally with a per-tensor scale) or in
GGML blocks (GGUF files). `QuantizedTensor` is such a tensor as read from the file. `attach` puts
it into a model built on the `meta` device: the module keeps the stored bytes as its parameter,
and a `torch.nn.utils.parametrize` parametrization (`Dequantize`) turns them into `dtype` values
each time the module reads its `weight`. So every layer dequantises its own weight inside its
forward and frees it right after; one layer's weight in the compute dtype is all that exists at a
time. Code that reads a weight directly (the MMDiT's split q, k, v GEMMs read `qkv.weight`) sees
the dequantised tensor too, and a LoRA's unmerged delta (sd3/lora/apply.py) stacks after it.

The formats and where they come from are in docs/reference.md §8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from sd3.quant import fused
from sd3.quant.ggml import BLOCK_TYPES

# safetensors dtype name -> torch dtype of the fp8 formats.
FP8 = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
SUPPORTED = tuple(FP8) + tuple(BLOCK_TYPES)


def dequantize(qtype: str, stored: torch.Tensor, shape: tuple[int, ...], scale: torch.Tensor | None,
               dtype: torch.dtype) -> torch.Tensor:
    """Stored values -> a `dtype` tensor of `shape`.

    fp8: values · scale when the file has a scale (one per tensor, or one per output row), the
    product taken in float32; GGML blocks: ggml.py's dequantisers, in float32, then cast. Compiled
    into one pass where possible (fused.py), with the same values.
    """
    return fused.dequantize(qtype, stored, shape, scale, dtype, fp8=qtype in FP8)


@dataclass
class QuantizedTensor:
    """One tensor as a file stores it.

    Attributes:
        qtype: "F8_E4M3" / "F8_E5M2" (fp8), or a GGML block type ("Q8_0", "Q4_K", ...).
        data: fp8 values of the logical shape, or uint8 blocks (..., bytes per row).
        shape: the logical shape, as the model's parameter has it.
        scale: fp8 only: the float32 weight scale (`scale_weight` / `weight_scale`), or None.
        input_scale: fp8 only: the activation scale some files carry (`scale_input` / `input_scale`),
            kept for an fp8 matmul; the upcast path does not use it.
    """

    qtype: str
    data: torch.Tensor
    shape: tuple[int, ...]
    scale: torch.Tensor | None = None
    input_scale: torch.Tensor | None = None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.qtype, self.data, self.shape, self.scale, dtype)


class Dequantize(nn.Module):
    """A parametrization: the stored tensor (the module's `parametrizations.<name>.original`) -> `dtype` values."""

    def __init__(self, tensor: QuantizedTensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.qtype, self.shape, self.dtype = tensor.qtype, tensor.shape, dtype
        self.register_buffer("scale", tensor.scale)
        self.register_buffer("input_scale", tensor.input_scale)

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return dequantize(self.qtype, stored, self.shape, self.scale, self.dtype)


def attach(model: nn.Module, name: str, tensor: QuantizedTensor, *, dtype: torch.dtype, device: torch.device) -> None:
    """Make `model`'s tensor `name` (e.g. "joint_blocks.0.x_block.attn.qkv.weight") read as `tensor` dequantised."""
    path, _, attr = name.rpartition(".")
    module = model.get_submodule(path)
    stored = tensor.data.to(device)
    setattr(module, attr, nn.Parameter(stored, requires_grad=False))
    # unsafe: the parametrization changes dtype and shape, which parametrize otherwise refuses.
    parametrize.register_parametrization(module, attr, Dequantize(tensor, dtype).to(device), unsafe=True)


def is_quantized(module: nn.Module, attr: str = "weight") -> bool:
    """Whether `module.<attr>` is stored quantised (read through `Dequantize`)."""
    return parametrize.is_parametrized(module, attr) and any(
        isinstance(p, Dequantize) for p in module.parametrizations[attr]
    )


def compute_in(module: nn.Module, dtype: torch.dtype) -> None:
    """Run one module (not its children) in `dtype`: quantised tensors dequantise to it, the others are converted."""
    for attr, value in module._parameters.items():
        if value is not None:
            module._parameters[attr] = nn.Parameter(value.to(dtype), requires_grad=False)
    for chain in getattr(module, "parametrizations", {}).values():
        for p in chain:
            if isinstance(p, Dequantize):
                p.dtype = dtype


def state_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers as stored (quantised ones at their stored size)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())
