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
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open

from sd3.checkpoint import open_checkpoint
from sd3.errors import ModelLoadingError

# (down suffix, up suffix)
_SUFFIXES = ((".lora_A.weight", ".lora_B.weight"), (".lora_down.weight", ".lora_up.weight"),
             (".lora.down.weight", ".lora.up.weight"))  # PEFT/diffusers, kohya/OneTrainer, SimpleTuner
FORMATS = ("diffusers", "kohya", "onetrainer", "lycoris", "original")
# diffusers' SD3 transformer modules, for PEFT files saved without the `transformer.` component prefix
_TRANSFORMER_MODULES = ("transformer_blocks.", "proj_out", "norm_out.", "context_embedder", "time_text_embed.")


@dataclass(frozen=True)
class LoRAModule:
    """One adapted module as the file names it, with its factors (kept factored: ΔW is built on demand).

    ΔW = (alpha / rank) · up @ down for a LoRA; LoHa (Hyeon-Woo et al., arXiv 2108.06098) has
    ΔW = (alpha / rank) · (w1_a @ w1_b) ⊙ (w2_a @ w2_b), and LoKr ΔW = (alpha / rank) · w1 ⊗ w2
    (Kronecker; each side whole or a product `_a @ _b`, rank that of the product, and scale 1 when
    neither side is one), as LyCORIS' own forward pass and `lycoris.functional` compute them.
    """

    name: str  # the file's module name, e.g. "transformer.transformer_blocks.0.attn.to_q"
    kind: str  # "lora", "loha" or "lokr"
    factors: dict[str, torch.Tensor]  # lora: down, up; loha: w1_a, w1_b, w2_a, w2_b; lokr: w1, w2 or their _a/_b
    alpha: float
    rank: int
    shape: tuple[int, int]  # (out, in) of the weight it changes

    def delta(self) -> torch.Tensor:
        """ΔW (out, in) before the alpha / rank scale."""
        f = self.factors
        if self.kind == "lora":
            return f["up"] @ f["down"]
        if self.kind == "loha":
            return (f["w1_a"] @ f["w1_b"]) * (f["w2_a"] @ f["w2_b"])
        return torch.kron(*(f[f"w{i}"] if f"w{i}" in f else f[f"w{i}_a"] @ f[f"w{i}_b"] for i in (1, 2)))

    def to(self, device: torch.device) -> LoRAModule:
        return replace(self, factors={k: v.to(device) for k, v in self.factors.items()})


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
            rank = down.shape[0]
            modules.append(LoRAModule(_module_name(name, format_), "lora", {"down": down, "up": up},
                                      _alpha(name, tensors, metadata, rank), rank, (up.shape[0], down.shape[1])))
            unused -= {key, up_key, name + ".alpha"}
    for name in sorted({k.rsplit(".", 1)[0] for k in keys if re.search(r"\.(hada|lokr)_", k)}):
        module = _lycoris(name, tensors, path)
        modules.append(replace(module, name=_module_name(name, format_)))
        unused -= {f"{name}.{suffix}" for suffix in ("alpha", *(_FILE_SUFFIX[module.kind] + k for k in module.factors))}
    if unused:
        raise ModelLoadingError(f"LoRA {path} ({format_} format): {len(unused)} keys are not LoRA factors, "
                                f"e.g. {sorted(unused)[:5]}")
    return LoRAFile(path, format_, modules)


_FILE_SUFFIX = {"loha": "hada_", "lokr": "lokr_"}


def _lycoris(name: str, tensors: dict, path: Path) -> LoRAModule:
    """A LoHa or LoKr module, its factors' shapes checked; `name` as the file has it."""
    def get(suffix: str) -> torch.Tensor | None:
        return tensors.get(f"{name}.{suffix}")

    def fail(why: str) -> ModelLoadingError:
        return ModelLoadingError(f"LoRA {path}: LyCORIS module '{name}' {why}")

    if get("hada_t1") is not None or get("lokr_t2") is not None:
        raise fail("is a convolution (Tucker) module; SD3's layers are linear")
    if any(key.startswith(f"{name}.hada_") for key in tensors):
        factors = {f"w{i}_{s}": get(f"hada_w{i}_{s}") for i in (1, 2) for s in ("a", "b")}
        missing = [f"hada_{k}" for k, v in factors.items() if v is None]
        if missing:
            raise fail(f"(LoHa) lacks {', '.join(missing)}")
        (w1a, w1b, w2a, w2b), shapes = factors.values(), [tuple(t.shape) for t in factors.values()]
        if any(t.ndim != 2 for t in factors.values()) or w1a.shape[1] != w1b.shape[0] or \
                w2a.shape[1] != w2b.shape[0] or (w1a.shape[0], w1b.shape[1]) != (w2a.shape[0], w2b.shape[1]):
            raise fail(f"(LoHa) has factors that do not fit together: w1_a/b, w2_a/b {shapes}")
        kind, rank, shape = "loha", w1b.shape[0], (w1a.shape[0], w1b.shape[1])
    else:
        factors, rank, sides = {}, None, []
        for i in (1, 2):
            whole, a, b = get(f"lokr_w{i}"), get(f"lokr_w{i}_a"), get(f"lokr_w{i}_b")
            if whole is not None:
                factors[f"w{i}"] = whole
                sides.append(tuple(whole.shape))
            elif a is not None and b is not None:
                if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
                    raise fail(f"(LoKr) has lokr_w{i}_a {tuple(a.shape)} and lokr_w{i}_b {tuple(b.shape)}, which do not multiply")
                factors[f"w{i}_a"], factors[f"w{i}_b"] = a, b
                sides.append((a.shape[0], b.shape[1]))
                rank = a.shape[1]  # the decomposed side's rank (LyCORIS decomposes one side)
            else:
                raise fail(f"(LoKr) has neither lokr_w{i} nor lokr_w{i}_a/_b")
        if any(len(side) != 2 for side in sides):
            raise fail(f"(LoKr) has sides of shapes {sides}; SD3's layers are linear")
        kind, shape = "lokr", (sides[0][0] * sides[1][0], sides[0][1] * sides[1][1])
    # LyCORIS scales by alpha / rank, and by 1 where no side is decomposed (LoKr with two whole sides).
    alpha = float(get("alpha")) if get("alpha") is not None and rank is not None else float(rank or 1)
    return LoRAModule(name, kind, factors, alpha, rank or 1, shape)


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
        return "lycoris"
    if any(re.search(r"\.(hada|lokr)_", k) for k in keys):
        raise ModelLoadingError(
            f"{path} holds LyCORIS modules under names this project does not map (it reads them under "
            f"lycoris_, kohya's lora_unet_/lora_te*_ and OneTrainer's lora_transformer_ names); keys: {keys[:3]}"
        )
    raise ModelLoadingError(
        f"{path} is not a LoRA in a format this project reads (diffusers/PEFT lora_A/lora_B, SimpleTuner "
        f"lora.down/lora.up, kohya lora_unet_/lora_te*_ or OneTrainer lora_transformer_ with lora_down/lora_up, "
        f"LyCORIS LoHa/LoKr, or original diffusion_model. names); keys: {keys[:3]}"
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
