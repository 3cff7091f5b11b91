"""Reading `.safetensors` checkpoints: memory-mapped, lazily, and never by unpickling.

A `TensorSource` (sd3/tensor_source.py) is a read-only view of named tensors backed by an open
safetensors file, a GGUF file (sd3/quant/gguf_file.py) or an in-memory dict. Loaders first ask it for shapes, to infer a model's configuration without reading
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
from sd3.quant.gguf_file import open_gguf
from sd3.quant.weights import FP8, QuantizedTensor
from sd3.tensor_source import TensorSource

# safetensors dtype names of the tensors this project converts.
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# Extensions of pickle-based checkpoints. Unpickling runs arbitrary code, so we refuse them.
_PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}

CheckpointLike = str | os.PathLike | Mapping[str, torch.Tensor]


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


def sha256_file(path: Path) -> str:
    """A file's sha256 (hex), read in 1 MiB blocks: how images and LoRAs are identified."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
