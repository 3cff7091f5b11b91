"""Applying LoRAs to loaded models: merged into the weights, or as a delta computed at forward time.

    lora = load_lora("style.safetensors")
    handle = lora.apply({"mmdit": model, "clip_l": clip_l}, scale=0.8)               # merged
    handle.remove()                                                                   # weights restored bit for bit
    handle = lora.apply(models, scale=0.8, merge=False); handle.scale = 0.5          # unmerged: scale changes live

Merged: W += ΔW, the touched rows kept aside so `remove()` puts the exact original bits back.
Unmerged: `weight` becomes a parametrization (torch.nn.utils.parametrize) returning W + Σ ΔW on
every access, so code that reads `qkv.weight` directly (the MMDiT's split q, k, v GEMMs) sees it
too; several LoRAs stack and each handle's `scale` is read at forward time. A weight stored
quantised (fp8, GGUF; sd3/quant/) always takes its LoRA unmerged, after its dequantisation: adding
a delta to fp8 or 4-bit blocks would round it away.

Strict by default: a key that maps to no module, a shape that does not fit, or a LoRA made for
another architecture is an error naming the keys and the detected format; `strict=False` applies
what maps and warns with the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from sd3.errors import ModelLoadingError
from sd3.checkpoint import sha256_file
from sd3.tensor_source import foreign_architecture
from sd3.lora.formats import LoRAFile, LoRAModule, read_lora
from sd3.lora.mapping import Target, diffusers_target, kohya_lookup, kohya_target, onetrainer_target
from sd3.quant import is_quantized

logger = logging.getLogger(__name__)
_SHOWN = 5


@dataclass
class _Change:
    linear: nn.Linear
    rows: slice
    module: LoRAModule  # its factors on the linear's device
    swap_halves: bool  # diffusers' (scale, shift) rows onto the checkpoint's (shift, scale)
    backup: torch.Tensor | None = None  # merged: the original rows

    @property
    def factor(self) -> float:
        return self.module.alpha / self.module.rank

    def matrix(self) -> torch.Tensor:
        """ΔW (rows, in) before the scale and the alpha / rank factor, built from the factors now."""
        delta = self.module.delta()
        return torch.cat(delta.chunk(2)[::-1]) if self.swap_halves else delta


class LoRAHandle:
    """One LoRA applied to some models; `scale` (unmerged) changes it live, `remove()` takes it out."""

    def __init__(self, lora: LoRA, scale: float, merged: bool, changes: list[_Change]) -> None:
        self.lora, self.scale, self.merged, self.changes = lora, scale, merged, changes

    def remove(self) -> None:
        for change in reversed(self.changes):
            if change.backup is not None:
                change.linear.weight.data[change.rows] = change.backup
                continue
            chain = change.linear.parametrizations.weight
            at = next(i for i, p in enumerate(chain) if isinstance(p, _Deltas))
            chain[at].entries = [e for e in chain[at].entries if e[0] is not self]
            if chain[at].entries:
                continue
            if len(chain) == 1:
                parametrize.remove_parametrizations(change.linear, "weight", leave_parametrized=False)
            else:  # a quantised weight keeps its dequantisation
                del chain[at]
        self.changes = []


class _Deltas(nn.Module):
    """A weight parametrization: W + Σ scale · (alpha / rank) · ΔW over the applied LoRAs (`LoRAModule.delta`)."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[tuple[LoRAHandle, _Change]] = []

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out = weight.clone()
        for handle, change in self.entries:
            delta = (handle.scale * change.factor) * change.matrix()
            out[change.rows] += delta.to(out.dtype)
        return out


@dataclass
class LoRA:
    """A LoRA file read once; apply it to as many models, as many times, as wanted."""

    file: LoRAFile
    sha256: str = field(default="")

    @property
    def path(self) -> Path:
        return self.file.path

    def apply(self, models: dict[str, nn.Module], scale: float = 1.0, *, merge: bool = True,
              strict: bool = True, only: str | None = None) -> LoRAHandle:
        """Apply to `models` ({"mmdit": ..., "clip_l": ..., "clip_g": ..., "t5": ...}, any subset).

        `only`: adapt that component alone and pass over modules aimed at the others (a pipeline
        applies a LoRA to each model as it loads); a module aimed at nothing is still an error."""
        planned = self._plan(models, strict, None if only is None else (only,))
        handle = LoRAHandle(self, scale, merge, [])
        with torch.no_grad():
            for module, target, linear in planned:
                change = _change(module, target, linear)
                if merge and not is_quantized(linear):  # a quantised weight cannot take a delta: unmerged
                    change.backup = linear.weight.data[change.rows].clone()
                    delta = (scale * change.factor) * change.matrix()
                    linear.weight.data[change.rows] = (change.backup.float() + delta).to(linear.weight.dtype)
                else:
                    chain = linear.parametrizations.weight if parametrize.is_parametrized(linear, "weight") else []
                    deltas = next((p for p in chain if isinstance(p, _Deltas)), None)
                    if deltas is None:
                        deltas = _Deltas()
                        parametrize.register_parametrization(linear, "weight", deltas, unsafe=True)
                    deltas.entries.append((handle, change))
                handle.changes.append(change)
        return handle

    def check(self, models: dict[str, nn.Module], strict: bool = True) -> None:
        """Raise now what `apply` would raise on `models` (built on the `meta` device, say), changing
        nothing: modules aimed at a component not in `models` are passed over."""
        self._plan(models, strict, tuple(models))

    def _plan(self, models: dict[str, nn.Module], strict: bool, only: tuple[str, ...] | None = None):
        linears = {c: {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)} for c, model in models.items()}
        depth = len(models["mmdit"].joint_blocks) if "mmdit" in models else 0
        lookup = kohya_lookup({c: list(names) for c, names in linears.items()})
        planned, unmapped, mismatched = [], [], []
        for module in self.file.modules:
            target = self._target(module.name, depth, lookup)
            if only is not None and target is not None and target.component not in only:
                continue
            linear = linears.get(target.component, {}).get(target.module) if target else None
            if linear is None:
                unmapped.append(module.name)
                continue
            rows = linear.out_features // 3 if target.qkv_part is not None else linear.out_features
            if module.shape != (rows, linear.in_features):
                mismatched.append(f"{module.name} ({module.shape[0]}x{module.shape[1]} against "
                                  f"{target.module}'s {rows}x{linear.in_features})")
                continue
            planned.append((module, target, linear))
        where = f"LoRA {self.path.name} ({self.file.format} format)"
        foreign = foreign_architecture([m.name for m in self.file.modules])
        if foreign and (unmapped or mismatched):
            raise ModelLoadingError(f"{where} was made for {foreign}, not for SD3: e.g. {(unmapped + mismatched)[:2]}")
        if mismatched:
            raise ModelLoadingError(
                f"{where} does not fit this model's shapes, so it was made for another SD3 variant: "
                f"{len(mismatched)} modules, e.g. {mismatched[:_SHOWN]}"
            )
        if unmapped:
            message = (f"{where}: {len(unmapped)} of {len(self.file.modules)} modules map to nothing in the loaded "
                       f"models: {unmapped[:_SHOWN]}")
            if strict:
                raise ModelLoadingError(message + "; fix the names, or pass `strict=False` to apply the rest")
            logger.warning("%s; ignored, the rest applied", message)
        return planned

    def _target(self, name: str, depth: int, lookup: dict) -> Target | None:
        if self.file.format == "diffusers":
            return diffusers_target(name, depth)
        if self.file.format == "kohya":
            return kohya_target(name, lookup)
        if self.file.format in ("onetrainer", "lycoris"):
            return onetrainer_target(name, depth, lookup)
        return Target("mmdit", name)


def _change(module: LoRAModule, target: Target, linear: nn.Linear) -> _Change:
    n = linear.out_features // 3
    rows = slice(target.qkv_part * n, (target.qkv_part + 1) * n) if target.qkv_part is not None else slice(None)
    device = next(linear.parameters()).device  # not `weight`, which would dequantise a quantised one
    return _Change(linear, rows, module.to(device), target.swap_halves)


def load_lora(path: str | Path) -> LoRA:
    """Read a LoRA `.safetensors` file (diffusers/PEFT, SimpleTuner, kohya, OneTrainer, LyCORIS or original names)."""
    file = read_lora(path)
    return LoRA(file, sha256_file(Path(path)))
