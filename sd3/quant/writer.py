"""Writing fp8 safetensors files and GGUF files from real-layout checkpoints, in the formats users have.

    write_fp8("t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors", scaling="scale_weight")
    write_gguf("sd3.5_medium.safetensors", "sd3.5_medium-Q4_0.gguf", "Q4_0")

Which tensors are quantised follows the converters in use: only 2-D `.weight` tensors (the linear
layers and embeddings). Biases, norms, `pos_embed`, convolutions and the VAE keep their dtype
(fp8), or go to F32 (GGUF: 1-D tensors and tensors of at most 1024 values, ComfyUI-GGUF's rule)
or else to BF16 / F16 (BF16 when the source is bfloat16, which F16 cannot always hold). `pos_embed`
matters most: the MMDiT reads all of it (226 M values for SD3.5) at every step, so a quantised
one would be dequantised whole each time. A GGUF row must hold whole blocks, so a weight whose rows
do not (e.g. 384 values in a 256-value block) falls back the same way, as llama.cpp's quantiser does. GGUF blocks are made by the `gguf`
package's quantiser, which covers Q8_0, Q5_0, Q5_1, Q4_0 and Q4_1 (not the k-quants).
Both writers write to a temporary name and rename, so a target is never half-written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from sd3.checkpoint import open_checkpoint
from sd3.errors import ConfigurationError
from sd3.quant.fp8 import FORMATS, MARKER
from sd3.quant.gguf_file import gguf_t5_name, require_gguf
from sd3.quant.weights import FP8

COMPONENT_PREFIXES = ("model.diffusion_model.", "text_encoders.clip_l.transformer.",
                      "text_encoders.clip_g.transformer.", "text_encoders.t5xxl.transformer.")
SCALINGS = (None, "scale_weight", "weight_scale")
GGUF_QTYPES = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "F16", "BF16")
GGUF_LAYOUTS = ("comfyui", "sd.cpp")
_SMALL = 1024  # values: ComfyUI-GGUF keeps tensors this small (and 1-D ones) in F32


def _quantizable(name: str, shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and name.endswith(".weight") and not name.startswith("first_stage_model.")


def write_fp8(source: str | os.PathLike, target: str | os.PathLike, *, fp8: str = "F8_E4M3",
              scaling: str | None = None) -> Path:
    """Write `source` with its 2-D weights in fp8.

    Args:
        fp8: "F8_E4M3" (float8_e4m3fn, what published files use) or "F8_E5M2".
        scaling: None (plain: the weight cast to fp8), "scale_weight" (ComfyUI's first scaled
            convention: a `scaled_fp8` marker, `scale_weight` and `scale_input` per layer) or
            "weight_scale" (the newer one: `weight_scale`, `input_scale` and the
            `_quantization_metadata` header). Scaled weights are stored as weight / scale with
            scale = max|weight| / the fp8 format's largest value; the input scale written is 1.
    """
    if fp8 not in FP8:
        raise ConfigurationError(f"`fp8` must be one of {list(FP8)}, not {fp8!r}")
    if scaling not in SCALINGS:
        raise ConfigurationError(f"`scaling` must be one of {list(SCALINGS)}, not {scaling!r}")
    dtype, target = FP8[fp8], Path(target)
    largest = torch.finfo(dtype).max
    out, layers, prefixes = {}, {}, set()
    with open_checkpoint(source) as checkpoint:
        for name in checkpoint.keys():
            tensor = checkpoint.tensor(name)
            if not _quantizable(name, tuple(tensor.shape)) or not tensor.is_floating_point():
                out[name] = tensor.contiguous()
                continue
            layer = name[: -len(".weight")]
            prefixes.add(next((p for p in COMPONENT_PREFIXES if name.startswith(p)), ""))
            if scaling is None:
                out[name] = tensor.to(dtype)
                continue
            scale = (tensor.float().abs().max() / largest).clamp(min=torch.finfo(torch.float32).tiny)
            out[name] = (tensor.float() / scale).to(dtype)
            weight_scale, input_scale = ("scale_weight", "scale_input") if scaling == "scale_weight" else (
                "weight_scale", "input_scale")
            out[f"{layer}.{weight_scale}"] = scale.reshape(())
            out[f"{layer}.{input_scale}"] = torch.ones(())
            layers[layer] = {"format": next(k for k, v in FORMATS.items() if v == fp8)}
    metadata = {}
    if scaling == "scale_weight":
        out.update({f"{prefix}{MARKER}": torch.empty(0, dtype=dtype) for prefix in prefixes})
    elif scaling == "weight_scale":
        metadata["_quantization_metadata"] = json.dumps({"format_version": "1.0", "layers": layers})
    temporary = target.with_name(f".{target.name}.partial")
    save_file(out, str(temporary), metadata=metadata or None)
    os.replace(temporary, target)
    return target


def write_gguf(source: str | os.PathLike, target: str | os.PathLike, qtype: str = "Q8_0", *,
               component: str = "mmdit", layout: str = "comfyui") -> Path:
    """Write one component of `source` as a GGUF file of `qtype`.

    Args:
        qtype: one of GGUF_QTYPES.
        component: "mmdit" (names of the single-file checkpoints) or "t5" (llama.cpp's T5 names,
            architecture "t5encoder").
        layout: the MMDiT's layout, "comfyui" (architecture "sd3", names without
            `model.diffusion_model.`) or "sd.cpp" (no architecture, names with the prefix).
    """
    gguf = require_gguf()
    if qtype not in GGUF_QTYPES:
        raise ConfigurationError(
            f"`qtype` {qtype!r} cannot be written (the gguf package has no quantiser for the k-quants); "
            f"choose one of {list(GGUF_QTYPES)}"
        )
    if component not in ("mmdit", "t5") or layout not in GGUF_LAYOUTS:
        raise ConfigurationError(f"`component` must be 'mmdit' or 't5' and `layout` one of {list(GGUF_LAYOUTS)}")
    target = Path(target)
    kind = gguf.GGMLQuantizationType[qtype]
    temporary = target.with_name(f".{target.name}.partial")
    architecture = "t5encoder" if component == "t5" else ("sd3" if layout == "comfyui" else None)
    writer = gguf.GGUFWriter(str(temporary), arch=architecture or "sd3")
    if architecture is None:  # stable-diffusion.cpp's files carry no general.architecture
        writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    prefix = "model.diffusion_model." if component == "mmdit" else "text_encoders.t5xxl.transformer."
    with open_checkpoint(source) as checkpoint:
        part = checkpoint.component(prefix)
        for name in part.keys():
            if component == "t5" and name == "encoder.embed_tokens.weight":
                continue  # the same tensor as shared.weight
            stored = part.tensor(name)
            values = stored.float().numpy()
            kind_here = kind
            if values.ndim == 1 or values.size <= _SMALL:
                kind_here = gguf.GGMLQuantizationType.F32
            elif not _quantizable(name, values.shape) or values.shape[-1] % gguf.GGML_QUANT_SIZES[kind][0]:
                kind_here = gguf.GGMLQuantizationType.BF16 if stored.dtype == torch.bfloat16 else (
                    gguf.GGMLQuantizationType.F16)
            out_name = gguf_t5_name(name) if component == "t5" else (
                prefix + name if layout == "sd.cpp" else name)
            writer.add_tensor(out_name, gguf.quants.quantize(values, kind_here), raw_dtype=kind_here)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(temporary, target)
    return target
