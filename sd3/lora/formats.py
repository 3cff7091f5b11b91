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
    """One adapted module as the file names it: a LoRA's factors, or a LyCORIS module's whole ΔW.

    ΔW = (alpha / rank) · up @ down for a LoRA; LoHa (Hyeon-Woo et al., arXiv 2108.06098) has
    ΔW = (alpha / rank) · (w1_a @ w1_b) ⊙ (w2_a @ w2_b), and LoKr ΔW = (alpha / rank) · w1 ⊗ w2
    (Kronecker; each side whole or a product `_a @ _b`, rank that of the product, and scale 1 when
    neither side is one), as LyCORIS' own forward pass and `lycoris.functional` compute them.
    """

    name: str  # the file's module name, e.g. "transformer.transformer_blocks.0.attn.to_q"
    down: torch.Tensor | None  # (rank, in); None for LyCORIS
    up: torch.Tensor | None  # (out, rank); None for LyCORIS
    alpha: float
    full: torch.Tensor | None = None  # LyCORIS: ΔW (out, in) before the alpha / rank scale
    lycoris_rank: int | None = None

    @property
    def rank(self) -> int:
        return self.lycoris_rank if self.full is not None else self.down.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the weight it changes."""
        return tuple(self.full.shape) if self.full is not None else (self.up.shape[0], self.down.shape[1])

    def matrix(self) -> torch.Tensor:
        """ΔW (out, in) before the alpha / rank scale."""
        return self.full if self.full is not None else self.up @ self.down


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
    for name in sorted({k.rsplit(".", 1)[0] for k in keys if re.search(r"\.(hada|lokr)_", k)}):
        module, used = _lycoris(name, tensors, path)
        modules.append(LoRAModule(_module_name(name, format_), None, None, module[0], module[1], module[2]))
        unused -= used
    if unused:
        raise ModelLoadingError(f"LoRA {path} ({format_} format): {len(unused)} keys are not LoRA factors, "
                                f"e.g. {sorted(unused)[:5]}")
    return LoRAFile(path, format_, modules)


def _lycoris(name: str, tensors: dict, path: Path) -> tuple[tuple[float, torch.Tensor, int], set[str]]:
    """A LoHa or LoKr module's (alpha, ΔW before its scale, rank) and the keys it used."""
    def get(suffix: str) -> torch.Tensor | None:
        return tensors.get(f"{name}.{suffix}")

    if get("hada_t1") is not None or get("lokr_t2") is not None:
        raise ModelLoadingError(f"LoRA {path}: '{name}' is a convolution (Tucker) LyCORIS module; SD3's are linear")
    if get("hada_w1_a") is not None:
        w1a, w1b, w2a, w2b = (get(f"hada_w{i}_{s}") for i in (1, 2) for s in ("a", "b"))
        if any(t is None for t in (w1b, w2a, w2b)):
            raise ModelLoadingError(f"LoRA {path}: LoHa module '{name}' lacks one of hada_w1_a/b, hada_w2_a/b")
        full, rank, used = (w1a @ w1b) * (w2a @ w2b), w1b.shape[0], {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}
    else:
        sides, rank, used = [], None, set()
        for i in (1, 2):
            whole, a, b = get(f"lokr_w{i}"), get(f"lokr_w{i}_a"), get(f"lokr_w{i}_b")
            if whole is None and (a is None or b is None):
                raise ModelLoadingError(f"LoRA {path}: LoKr module '{name}' has neither lokr_w{i} nor lokr_w{i}_a/_b")
            sides.append(whole if whole is not None else a @ b)
            used |= {f"lokr_w{i}"} if whole is not None else {f"lokr_w{i}_a", f"lokr_w{i}_b"}
            rank = rank or (a.shape[1] if whole is None else None)
        full = torch.kron(sides[0], sides[1])
    alpha = float(get("alpha")) if get("alpha") is not None and rank is not None else float(rank or 1)
    return (alpha, full, rank or 1), {f"{name}.{suffix}" for suffix in used | {"alpha"}}


def _detect(keys: list[str], path: Path) -> str:
    if any(k.startswith("lora_transformer_") for k in keys):  # OneTrainer: diffusers' names with underscores
        return "onetrainer"
    if any(k.startswith(("lora_unet_", "lora_te1_", "lora_te2_", "lora_te3_")) for k in keys):
        return "kohya"
    if any(k.startswith(("diffusion_model.", "model.diffusion_model.")) for k in keys):
        return "original"
    if any(".lora_A." in k or ".lora_B." in k or ".lora.down." in k for k in keys):  # PEFT, diffusers, SimpleTuner
        return "diffusers"
    if any(k.startswith("lycoris_") for k in keys):  # LyCORIS' own names: diffusers' with underscores
        return "onetrainer"
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
