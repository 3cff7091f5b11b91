"""Reading `.safetensors` checkpoints: memory-mapped, lazily, and never by unpickling.

A `TensorSource` is a read-only view of named tensors backed by an open safetensors file or by an
in-memory dict. Loaders first ask it for shapes, to infer a model's configuration without reading
a single weight, then read the tensors one at a time in the target dtype:

- in the file's own dtype, a tensor is a copy-on-write view of the memory-mapped file
  (`safetensors.safe_open`): no copy at all;
- in another dtype, its bytes are read with plain file reads (through the page cache, never mapped
  into the process) and converted, so the process holds the converted copy and one tensor in flight,
  not the converted copy plus the file's mapped pages.

Low-precision files are read the same way (sd3/quant/): an fp8 safetensors file's fp8 weights and
a GGUF file's quantised tensors are offered by `quantized(key)` as they are stored, so a loader can
keep them quantised; `tensor(key)` returns any tensor dequantised.

The official SD3 files come in two layouts (docs/reference.md §1): all-in-one checkpoints
whose keys carry a prefix per component (`model.diffusion_model.`, `first_stage_model.`,
`text_encoders.clip_l.transformer.`, ...) and separate files with no prefix. `TensorSource.under`
gives the view of one component with its prefix stripped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from sd3.errors import ModelLoadingError
from sd3.quant.fp8 import fp8_layout
from sd3.quant.weights import FP8, QuantizedTensor

# safetensors dtype names of the tensors this project converts.
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# Extensions of pickle-based checkpoints. Unpickling runs arbitrary code, so we refuse them.
_PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}

CheckpointLike = str | os.PathLike | Mapping[str, torch.Tensor]


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

    def renamed(self, aliases: Mapping[str, str]) -> TensorSource:
        """A view in which each key `old` of `aliases` that is present is seen as `aliases[old]`."""
        names = {aliases.get(k, k): v for k, v in self._names.items()}
        return TensorSource(names, self._shape, self._read, self.description, self._quantized, self._quantized_bytes)


def shape_lookup(shapes: Mapping[str, object], what: str, prefix: str) -> tuple[dict, Callable]:
    """(name -> shape dict, need) for config inference; `need(name)` is a shape or a clear error.

    Args:
        shapes: name -> tensor or shape tuple.
        what: the component with its article, for the error ("an MMDiT", "a T5 encoder").
        prefix: where an all-in-one SD3 file keeps this component, for the error.
    """
    shape = {name: tuple(getattr(v, "shape", v)) for name, v in shapes.items()}

    def need(name: str) -> tuple[int, ...]:
        if name not in shape:
            raise ModelLoadingError(
                f"not {what} checkpoint: tensor '{name}' is missing (an all-in-one SD3 file has it "
                f"under '{prefix}{name}')"
            )
        return shape[name]

    return shape, need


@contextlib.contextmanager
def open_checkpoint(source: CheckpointLike) -> Iterator[TensorSource]:
    """Open a `.safetensors` or `.gguf` path, or wrap a dict of tensors, as a `TensorSource`.

    The file stays open while the `with` block runs. A missing path, a directory, a pickle-based
    checkpoint, and a truncated or corrupt file each raise `ModelLoadingError` with a message that
    says what to do.
    """
    if isinstance(source, Mapping):
        yield _dict_source(source)
        return
    if not isinstance(source, (str, os.PathLike)):
        raise ModelLoadingError(
            f"a checkpoint must be a path to a .safetensors file or a dict of tensors, "
            f"not {type(source).__name__}"
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelLoadingError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise ModelLoadingError(f"expected a .safetensors file but {path} is a directory")
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise ModelLoadingError(
            f"{path} is a pickle-based checkpoint; this project loads only .safetensors files, "
            "because unpickling can run arbitrary code. Download the .safetensors release instead."
        )
    if path.suffix.lower() == ".gguf":
        from sd3.quant.gguf_file import open_gguf

        with open_gguf(path) as source:
            yield source
        return
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except SafetensorError as error:
        raise ModelLoadingError(
            f"{path} is not a readable safetensors file ({error}). It may be truncated (an "
            "interrupted download?), corrupt, or another format: delete it and download it again."
        ) from error
    except OSError as error:
        raise ModelLoadingError(f"could not open checkpoint {path}: {error}") from error
    with handle, open(path, "rb") as file:
        header_size = int.from_bytes(file.read(8), "little")
        entries = json.loads(file.read(header_size))
        metadata = entries.pop("__metadata__", None) or {}
        data_start = 8 + header_size
        fp8 = fp8_layout({k: v["dtype"] for k, v in entries.items()}, metadata, handle.get_tensor, str(path))

        scratch = [torch.empty(0, dtype=torch.uint8)]  # one read buffer, reused: fresh pages are costly

        def quantized(key: str) -> QuantizedTensor | None:
            return fp8.quantized(key, entries[key]["dtype"], handle.get_tensor)

        def read(key: str, dtype: torch.dtype | None) -> torch.Tensor:
            stored = _DTYPES.get(entries[key]["dtype"])
            if stored is None and (fp8_tensor := quantized(key)) is not None:
                return fp8_tensor.dequantize(dtype or torch.float32)
            if dtype is None or stored is None or stored == dtype or not stored.is_floating_point:
                return handle.get_tensor(key)  # zero-copy view of the mapped file
            begin, end = entries[key]["data_offsets"]
            if scratch[0].numel() < end - begin:
                scratch[0] = torch.empty(end - begin, dtype=torch.uint8)
            raw = scratch[0][: end - begin]
            file.seek(data_start + begin)
            if file.readinto(raw.numpy()) != end - begin:
                raise SafetensorError(f"tensor '{key}' runs past the end of the file")
            return raw.view(stored).reshape(entries[key]["shape"]).to(dtype)

        yield TensorSource(
            {key: key for key in handle.keys() if key not in fp8.hidden},
            shape=lambda key: tuple(handle.get_slice(key).get_shape()),
            read=read,
            description=str(path),
            quantized=quantized,
            quantized_bytes=lambda key: math.prod(entries[key]["shape"]) if entries[key]["dtype"] in FP8 else None,
        )


def _dict_source(tensors: Mapping[str, torch.Tensor]) -> TensorSource:
    bad = [key for key, value in tensors.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise ModelLoadingError(
            f"a state dict must map names to tensors; {len(bad)} entries are not tensors "
            f"(first: {bad[:3]})"
        )
    return TensorSource(
        {key: key for key in tensors},
        shape=lambda key: tuple(tensors[key].shape),
        read=lambda key, dtype: tensors[key] if dtype is None or not tensors[key].is_floating_point() else tensors[key].to(dtype),
        description="the given state dict",
    )


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


def sha256_file(path: Path) -> str:
    """A file's sha256 (hex), read in 1 MiB blocks: how images and LoRAs are identified."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
