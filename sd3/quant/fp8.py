"""fp8 safetensors files: which tensors are fp8, and the scale conventions that come with them.

Three kinds of fp8 file are in use (docs/reference.md §8):

- plain: `<layer>.weight` stored as `F8_E4M3` or `F8_E5M2` (ComfyUI's `t5xxl_fp8_e4m3fn.safetensors`);
  the value is the fp8 number itself;
- scaled, ComfyUI's first convention: a `scaled_fp8` marker tensor (named with the component's
  prefix in all-in-one files) and per layer a float32 `<layer>.scale_weight`, with an optional
  `<layer>.scale_input` (`t5xxl_fp8_e4m3fn_scaled.safetensors`, `sd3.5_large_fp8_scaled.safetensors`);
- scaled, the newer convention: `<layer>.weight_scale` and optional `<layer>.input_scale`, the
  layers listed in the header's `_quantization_metadata` JSON ({"layers": {layer: {"format": ...}}})
  or in per-layer `<layer>.comfy_quant` uint8 JSON tensors.

In both scaled conventions the weight is fp8 · scale. The input scale belongs to an fp8 matmul
(x / input_scale cast to fp8); the upcast path reads and keeps it but does not need it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from sd3.errors import ModelLoadingError
from sd3.quant.weights import FP8, QuantizedTensor

WEIGHT_SCALES = ("scale_weight", "weight_scale")
INPUT_SCALES = ("scale_input", "input_scale")
MARKER = "scaled_fp8"
LAYER_FORMAT = "comfy_quant"  # per-layer JSON of the newer convention
FORMATS = {"float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}  # `format` values we read


@dataclass
class Fp8Layout:
    """Where the fp8 weights of a safetensors file are, and their scales.

    `hidden` are the bookkeeping keys (scales, markers, formats) that loaders never see as tensors;
    `scales` maps each fp8 weight to its (weight scale key, input scale key), either possibly None.
    """

    hidden: set[str] = field(default_factory=set)
    scales: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    def quantized(self, key: str, dtype_name: str, read: Callable[[str], torch.Tensor]) -> QuantizedTensor | None:
        """The fp8 tensor `key` with its scales, or None when the file stores it in another dtype."""
        if dtype_name not in FP8:
            return None
        weight_scale, input_scale = self.scales.get(key, (None, None))
        data = read(key)
        return QuantizedTensor(
            dtype_name, data, tuple(data.shape),
            scale=read(weight_scale).float() if weight_scale else None,
            input_scale=read(input_scale).float() if input_scale else None,
        )


def fp8_layout(dtypes: Mapping[str, str], metadata: Mapping[str, str], read: Callable[[str], torch.Tensor],
               where: str) -> Fp8Layout:
    """Read the fp8 conventions off a file's tensor dtypes (name -> safetensors dtype) and header metadata.

    Raises:
        ModelLoadingError: a layer in another quantisation format (int8, nvfp4, ...), or a scale
            whose weight is not stored in fp8.
    """
    layout = Fp8Layout()
    formats = {}  # layer -> declared format
    if "_quantization_metadata" in metadata:
        try:
            formats.update({layer: conf.get("format") for layer, conf in
                            json.loads(metadata["_quantization_metadata"])["layers"].items()})
        except (ValueError, KeyError, AttributeError) as error:
            raise ModelLoadingError(f"{where} has an unreadable _quantization_metadata header ({error})") from error
    for key in dtypes:
        layer, _, suffix = key.rpartition(".")
        if key == MARKER or suffix == MARKER:
            layout.hidden.add(key)
        elif suffix == LAYER_FORMAT:
            layout.hidden.add(key)
            formats[layer] = json.loads(bytes(read(key).tolist()).decode()).get("format")
        elif suffix in WEIGHT_SCALES + INPUT_SCALES:
            layout.hidden.add(key)
            weight = f"{layer}.weight"
            if dtypes.get(weight) not in FP8:
                raise ModelLoadingError(
                    f"{where} has '{key}' but '{weight}' is {dtypes.get(weight, 'missing')}, not fp8: "
                    "the file is not a scaled fp8 file this project can read"
                )
            scale, input_scale = layout.scales.get(weight, (None, None))
            layout.scales[weight] = (key, input_scale) if suffix in WEIGHT_SCALES else (scale, key)
    unsupported = {layer: f for layer, f in formats.items() if f not in FORMATS}
    if unsupported:
        layer, name = next(iter(unsupported.items()))
        raise ModelLoadingError(
            f"{where} stores {len(unsupported)} layers in the quantisation format '{name}' (e.g. {layer}), "
            f"which this project does not read; supported: {', '.join(FORMATS)} (fp8 safetensors) and "
            "GGUF files. Use a bf16, fp16, fp8 or GGUF file instead."
        )
    return layout
