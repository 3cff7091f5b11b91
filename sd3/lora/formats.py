"""Reading a LoRA file: which format it is, and each adapted module's down, up and alpha.

A LoRA adds to a linear layer's weight W (out, in) the low-rank delta

    ΔW = scale · (alpha / rank) · up @ down        up (out, rank), down (rank, in)

(Hu et al., arXiv 2106.09685). The formats name the two factors differently: diffusers/PEFT
`lora_B`/`lora_A`, SimpleTuner `lora.up`/`lora.down`, kohya, OneTrainer and the original names
`lora_up`/`lora_down`. alpha is a `.alpha` tensor beside them (kohya, OneTrainer, SimpleTuner), or
`lora_alpha` in the file's `lora_adapter_metadata` (diffusers), else the rank. Only `.safetensors`
files are read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from sd3.checkpoint import open_checkpoint
from sd3.errors import ModelLoadingError

# (down suffix, up suffix)
_SUFFIXES = ((".lora_A.weight", ".lora_B.weight"), (".lora_down.weight", ".lora_up.weight"),
             (".lora.down.weight", ".lora.up.weight"))  # PEFT/diffusers, kohya/OneTrainer, SimpleTuner
FORMATS = ("diffusers", "kohya", "onetrainer", "original")
# diffusers' SD3 transformer modules, for PEFT files saved without the `transformer.` component prefix
_TRANSFORMER_MODULES = ("transformer_blocks.", "proj_out", "norm_out.", "context_embedder", "time_text_embed.")


@dataclass(frozen=True)
class LoRAModule:
    """One adapted module as the file names it."""

    name: str  # the file's module name, e.g. "transformer.transformer_blocks.0.attn.to_q"
    down: torch.Tensor  # (rank, in)
    up: torch.Tensor  # (out, rank)
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass(frozen=True)
class LoRAFile:
    path: Path
    format: str  # one of FORMATS
    modules: list[LoRAModule]


def read_lora(path: str | Path) -> LoRAFile:
    """Every module of a LoRA `.safetensors` file, its format detected from the key names.

    Raises:
        ModelLoadingError: unreadable file, keys in none of the formats, an up without its down.
    """
    path = Path(path)
    with open_checkpoint(path) as source:
        tensors = {key: source.tensor(key).float() for key in source.keys()}
    metadata = _adapter_metadata(path)
    keys = list(tensors)
    format_ = _detect(keys, path)
    modules, unused = [], set(keys)
    for down_suffix, up_suffix in _SUFFIXES:
        for key in keys:
            if not key.endswith(down_suffix):
                continue
            name = key[: -len(down_suffix)]
            up_key = name + up_suffix
            if up_key not in tensors:
                raise ModelLoadingError(f"LoRA {path}: '{key}' has no matching '{up_key}'")
            down, up = tensors[key], tensors[up_key]
            if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
                raise ModelLoadingError(f"LoRA {path}: '{name}' is not a linear LoRA (down {tuple(down.shape)}, "
                                        f"up {tuple(up.shape)})")
            alpha = _alpha(name, tensors, metadata, down.shape[0])
            modules.append(LoRAModule(_module_name(name, format_), down, up, alpha))
            unused -= {key, up_key, name + ".alpha"}
    if unused:
        raise ModelLoadingError(f"LoRA {path} ({format_} format): {len(unused)} keys are not LoRA factors, "
                                f"e.g. {sorted(unused)[:5]}")
    return LoRAFile(path, format_, modules)


def _detect(keys: list[str], path: Path) -> str:
    if any(k.startswith("lora_transformer_") for k in keys):  # OneTrainer: diffusers' names with underscores
        return "onetrainer"
    if any(k.startswith(("lora_unet_", "lora_te1_", "lora_te2_", "lora_te3_")) for k in keys):
        return "kohya"
    if any(k.startswith(("diffusion_model.", "model.diffusion_model.")) for k in keys):
        return "original"
    if any(".lora_A." in k or ".lora_B." in k or ".lora.down." in k for k in keys):  # PEFT, diffusers, SimpleTuner
        return "diffusers"
    raise ModelLoadingError(
        f"{path} is not a LoRA in a format this project reads (diffusers/PEFT lora_A/lora_B, SimpleTuner "
        f"lora.down/lora.up, kohya lora_unet_/lora_te*_ or OneTrainer lora_transformer_ with lora_down/lora_up, "
        f"or original diffusion_model. names); keys: {keys[:3]}"
    )


def _module_name(name: str, format_: str) -> str:
    """The module name without the format's framing (PEFT's base_model.model., the original prefix)."""
    if format_ == "original":
        return re.sub(r"^(model\.)?diffusion_model\.", "", name)
    name = name.replace("base_model.model.", "")
    if format_ == "diffusers" and name.startswith(_TRANSFORMER_MODULES):  # PEFT saved from the transformer alone
        return "transformer." + name
    return name


def _alpha(name: str, tensors: dict, metadata: dict, rank: int) -> float:
    if name + ".alpha" in tensors:
        return float(tensors[name + ".alpha"])
    component = name.split(".", 1)[0]
    pattern = metadata.get(f"{component}.alpha_pattern") or {}
    for suffix, value in pattern.items():
        if name.endswith(suffix):
            return float(value)
    return float(metadata.get(f"{component}.lora_alpha", rank))


def _adapter_metadata(path: Path) -> dict:
    """diffusers' `lora_adapter_metadata` (the PEFT config per component), or {}."""
    with safe_open(str(path), framework="pt") as handle:
        raw = (handle.metadata() or {}).get("lora_adapter_metadata")
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        raise ModelLoadingError(f"LoRA {path}: its lora_adapter_metadata is not valid JSON") from None
