"""GGUF files (stable-diffusion.cpp, ComfyUI-GGUF) as a `TensorSource`, read with the `gguf` package.

The `gguf` package (llama.cpp's own reader, an optional extra: `pip install 'sd3-from-scratch[gguf]'`)
parses the header; the tensor bytes are then read with plain file reads, so only what is kept is
held. What the files in use look like (docs/reference.md §8):

- MMDiT, ComfyUI-GGUF (city96's SD3.5 files): `general.architecture` = "sd3", the original
  single-file names without the `model.diffusion_model.` prefix;
- MMDiT, stable-diffusion.cpp: no `general.architecture`, names with the prefix;
- T5-XXL encoder (llama.cpp's converter, used by ComfyUI-GGUF): `general.architecture` = "t5" or
  "t5encoder" and llama.cpp's names (`enc.blk.0.attn_q.weight`), renamed here to transformers'.

GGUF lists a tensor's dimensions innermost first; the logical (torch) shape is that reversed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from sd3.errors import ModelLoadingError
from sd3.quant.ggml import BLOCK_TYPES, byte_shape
from sd3.quant.weights import QuantizedTensor
from sd3.tensor_source import TensorSource, foreign_architecture

FLOATS = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
MMDIT_ARCHITECTURES = {"sd3"}
T5_ARCHITECTURES = {"t5", "t5encoder"}

# llama.cpp's T5 encoder names -> transformers' (per block i; `enc.` and the block prefix handled below).
T5_BLOCK_NAMES = {
    "attn_q": "layer.0.SelfAttention.q", "attn_k": "layer.0.SelfAttention.k",
    "attn_v": "layer.0.SelfAttention.v", "attn_o": "layer.0.SelfAttention.o",
    "attn_rel_b": "layer.0.SelfAttention.relative_attention_bias", "attn_norm": "layer.0.layer_norm",
    "ffn_gate": "layer.1.DenseReluDense.wi_0", "ffn_up": "layer.1.DenseReluDense.wi_1",
    "ffn_down": "layer.1.DenseReluDense.wo", "ffn_norm": "layer.1.layer_norm",
}
_T5_LLAMA_NAMES = {ours: theirs for theirs, ours in T5_BLOCK_NAMES.items()}
_T5_BLOCK = re.compile(r"enc\.blk\.(\d+)\.(\w+)\.weight")


def t5_name(name: str) -> str:
    """llama.cpp's name of a T5 encoder tensor -> transformers' (unknown names are kept as they are)."""
    if name == "token_embd.weight":
        return "shared.weight"
    if name == "enc.output_norm.weight":
        return "encoder.final_layer_norm.weight"
    match = _T5_BLOCK.fullmatch(name)
    if match and match[2] in T5_BLOCK_NAMES:
        return f"encoder.block.{match[1]}.{T5_BLOCK_NAMES[match[2]]}.weight"
    return name


def gguf_t5_name(name: str) -> str:
    """transformers' name of a T5 encoder tensor -> llama.cpp's (the inverse of `t5_name`)."""
    if name == "shared.weight":
        return "token_embd.weight"
    if name == "encoder.final_layer_norm.weight":
        return "enc.output_norm.weight"
    block, _, inner = name.removeprefix("encoder.block.").partition(".")
    llama = _T5_LLAMA_NAMES.get(inner.removesuffix(".weight"))
    return f"enc.blk.{block}.{llama}.weight" if llama else name


def require_gguf():
    try:
        import gguf
    except ImportError as error:
        raise ModelLoadingError(
            "reading .gguf files needs the gguf package: pip install 'sd3-from-scratch[gguf]' (or pip install gguf)"
        ) from error
    return gguf


def _architecture(reader) -> str | None:
    field = reader.get_field("general.architecture")
    return None if field is None else bytes(field.parts[field.data[-1]]).decode("utf-8", "replace")


@contextlib.contextmanager
def open_gguf(path: Path) -> Iterator:
    """A `TensorSource` over a GGUF file of an SD3 MMDiT or a T5 encoder (names as our loaders expect).

    Raises:
        ModelLoadingError: no `gguf` package; an unreadable or truncated file; a file of another
            architecture (Flux, SDXL, an LLM); a tensor type this project does not dequantise.
    """
    gguf = require_gguf()
    readable = getattr(gguf.gguf_reader, "READER_SUPPORTED_VERSIONS", (2, 3))
    with open(path, "rb") as file:
        magic, raw = file.read(4), file.read(4)
    # The version is written in the file's byte order; gguf reads big-endian files too.
    version = min(int.from_bytes(raw, "little"), int.from_bytes(raw, "big"))
    if magic != b"GGUF" or version not in readable:  # a whole file, of a kind this reader cannot take
        what = "not a GGUF file (no GGUF magic)" if magic != b"GGUF" else f"a GGUF file of version {version}"
        raise ModelLoadingError(f"{path} is {what}; this project reads GGUF versions "
                                f"{', '.join(map(str, readable))}")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, KeyError, IndexError, OSError) as error:
        raise ModelLoadingError(
            f"{path} is not a readable GGUF file ({error}). Its header is sound, so it is most likely "
            "truncated (an interrupted download?) or corrupt: delete it and download it again."
        ) from error
    architecture = _architecture(reader)
    names = [t.name for t in reader.tensors]
    foreign = foreign_architecture(names)
    if foreign or (architecture is not None and architecture not in MMDIT_ARCHITECTURES | T5_ARCHITECTURES):
        raise ModelLoadingError(
            f"{path} is a GGUF file of another model ({foreign or f'architecture {architecture!r}'}); this project "
            f"reads the SD3 MMDiT (architecture 'sd3', or stable-diffusion.cpp's files) and the T5 encoder ('t5encoder')"
        )
    size = path.stat().st_size
    tensors = {}
    for t in reader.tensors:
        qtype = t.tensor_type.name
        if qtype not in FLOATS and qtype not in BLOCK_TYPES:
            raise ModelLoadingError(
                f"{path}: tensor '{t.name}' is stored as {qtype}, which this project does not dequantise; "
                f"supported: {', '.join([*FLOATS, *BLOCK_TYPES])}. Use a file quantised to one of those."
            )
        if t.data_offset + t.n_bytes > size:
            raise ModelLoadingError(
                f"{path} is truncated: tensor '{t.name}' ends at byte {t.data_offset + t.n_bytes} but the file "
                f"has {size}. Delete it and download it again."
            )
        tensors[t.name] = (qtype, tuple(int(d) for d in reversed(t.shape)), int(t.data_offset), int(t.n_bytes))
    rename = t5_name if architecture in T5_ARCHITECTURES else (lambda name: name)

    with open(path, "rb") as file:

        def raw(name: str) -> torch.Tensor:
            qtype, shape, offset, n_bytes = tensors[name]
            data = torch.empty(n_bytes, dtype=torch.uint8)
            file.seek(offset)
            if file.readinto(data.numpy()) != n_bytes:
                raise ModelLoadingError(f"{path} is truncated: tensor '{name}' is incomplete. Download it again.")
            if qtype in FLOATS:
                return data.view(FLOATS[qtype]).reshape(shape)
            return data.reshape(byte_shape(shape, qtype))

        def quantized(name: str) -> QuantizedTensor | None:
            qtype, shape, _, _ = tensors[name]
            return None if qtype in FLOATS else QuantizedTensor(qtype, raw(name), shape)

        def read(name: str, dtype: torch.dtype | None) -> torch.Tensor:
            stored = quantized(name)
            if stored is not None:
                return stored.dequantize(dtype or torch.float32)
            return raw(name) if dtype is None else raw(name).to(dtype)

        yield TensorSource(
            {rename(name): name for name in tensors},
            shape=lambda name: tensors[name][1],
            read=read,
            description=str(path),
            quantized=quantized,
            quantized_bytes=lambda name: None if tensors[name][0] in FLOATS else tensors[name][3],
        )
