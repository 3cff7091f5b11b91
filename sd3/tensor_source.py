"""A read-only view of named tensors that can be listed and measured before any is read.

`sd3.checkpoint.open_checkpoint` builds one over a safetensors file or a dict of tensors, and
`sd3.quant.gguf_file.open_gguf` over a GGUF file; loaders read a component through it. Also here:
recognising a file made for another architecture from its tensor names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from safetensors import SafetensorError

from sd3.errors import ModelLoadingError
from sd3.quant.weights import QuantizedTensor


class TensorSource:
    """Named tensors that can be listed and measured before any of them is read.

    `keys()` are the names as the component sees them (prefix already stripped by `under`);
    `shape(key)` costs nothing; `tensor(key)` reads one tensor from the file.
    """

    def __init__(
        self,
        names: dict[str, str],
        shape: Callable[[str], tuple[int, ...]],
        read: Callable[[str, torch.dtype | None], torch.Tensor],
        description: str,
        quantized: Callable[[str], QuantizedTensor | None] = lambda name: None,
        quantized_bytes: Callable[[str], int | None] = lambda name: None,
    ) -> None:
        self._names = names  # visible name -> name in the underlying file or dict
        self._shape = shape
        self._read = read  # (name, wanted dtype or None) -> tensor, dequantised if stored quantised
        self._quantized = quantized  # name -> the tensor as stored, if quantised (fp8, GGML blocks)
        self._quantized_bytes = quantized_bytes  # name -> its size as stored, if quantised; reads nothing
        self.description = description

    def keys(self) -> list[str]:
        return list(self._names)

    def __contains__(self, key: object) -> bool:
        return key in self._names

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shape(self._names[key])

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every visible key with its shape; reads no tensor data."""
        return {key: self.shape(key) for key in self._names}

    def quantized(self, key: str) -> QuantizedTensor | None:
        """The tensor as the file stores it when that is a quantised format (fp8, GGUF blocks), else None."""
        return self._quantized(self._names[key])

    def stored_bytes(self, key: str, dtype: torch.dtype) -> int:
        """What tensor `key` takes in memory once loaded in `dtype`: its stored size if quantised; reads nothing."""
        quantized = self._quantized_bytes(self._names[key])
        return quantized if quantized is not None else math.prod(self.shape(key)) * dtype.itemsize

    def tensor(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor, converted to `dtype` if given (floating-point tensors only); quantised ones dequantised."""
        try:
            return self._read(self._names[key], dtype)
        except SafetensorError as error:
            raise ModelLoadingError(
                f"could not read tensor '{key}' from {self.description}: {error}. The file may be "
                "truncated or corrupt: delete it and download it again."
            ) from error

    def has_prefix(self, prefix: str) -> bool:
        return any(key.startswith(prefix) for key in self._names)

    def component(self, prefix: str) -> TensorSource:
        """One component's view: the keys under `prefix` (all-in-one files), else every key (separate files)."""
        return self.under(prefix) if self.has_prefix(prefix) else self

    def under(self, prefix: str) -> TensorSource:
        """The keys that start with `prefix`, with the prefix removed."""
        names = {k[len(prefix) :]: v for k, v in self._names.items() if k.startswith(prefix)}
        return TensorSource(names, self._shape, self._read, f"{self.description} under '{prefix}'", self._quantized, self._quantized_bytes)

    def without(self, *keys: str) -> TensorSource:
        """A view that does not show `keys` (tensors a loader deliberately ignores)."""
        names = {k: v for k, v in self._names.items() if k not in keys}
        return TensorSource(names, self._shape, self._read, self.description, self._quantized, self._quantized_bytes)

    def transposed(self, key: str, as_key: str) -> TensorSource:
        """A view in which the 2-D tensor `key` is seen as `as_key`, transposed: OpenCLIP's bare
        `text_projection` ([in, out], applied as x @ P) as a Linear's `text_projection.weight` ([out, in])."""
        stored = self._names[key]
        names = {as_key if k == key else k: v for k, v in self._names.items()}

        def shape(name: str) -> tuple[int, ...]:
            return tuple(reversed(self._shape(name))) if name == stored else self._shape(name)

        def read(name: str, dtype: torch.dtype | None) -> torch.Tensor:
            tensor = self._read(name, dtype)
            return tensor.T.contiguous() if name == stored else tensor

        def quantized(name: str) -> QuantizedTensor | None:  # a transposed one is read dequantised
            return None if name == stored else self._quantized(name)

        return TensorSource(names, shape, read, self.description, quantized, self._quantized_bytes)

    def renamed(self, aliases: Mapping[str, str]) -> TensorSource:
        """A view in which each key `old` of `aliases` that is present is seen as `aliases[old]`."""
        names = {aliases.get(k, k): v for k, v in self._names.items()}
        return TensorSource(names, self._shape, self._read, self.description, self._quantized, self._quantized_bytes)


def foreign_architecture(keys: list[str]) -> str | None:
    """The architecture a file for another model (a checkpoint, a LoRA) was made for, read off its key names."""
    signatures = {
        "Flux": ("double_blocks", "single_blocks", "single_transformer_blocks"),
        "Stable Diffusion 1.x/2.x or SDXL (a UNet)": ("down_blocks", "input_blocks", "mid_block", "middle_block",
                                                      "unet."),
    }
    for architecture, marks in signatures.items():
        if any(mark in key for key in keys for mark in marks):
            return architecture
    return None
