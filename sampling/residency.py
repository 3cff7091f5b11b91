"""Which models stay loaded between `generate()` calls: the caller's policy, one working set per process.

A notebook that loops over seeds, cfg values or prompts should load each model once. A machine that
cannot hold every model at once should still run, one stage at a time, as Candle's main.rs does.
The policy (`keep`) says which:

| keep | between stages and calls |
|---|---|
| "all" | every model stays loaded after its first use |
| "stage" | each stage loads its models, runs and frees them (peak memory: the largest stage) |
| "auto" | "all" when the memory check says every stage's models fit together, else "stage" |

One process keeps one pipeline's models: when a pipeline is about to load a model, every other
live pipeline releases its models first, so that switching variant in a notebook never holds two
variants at once. `unload()` releases everything explicitly.
"""

from __future__ import annotations

import gc
import weakref
from collections import Counter
from collections.abc import Callable

import torch
from torch import nn

from sd3.errors import ConfigurationError

KEEP = ("auto", "all", "stage")
OnLoad = Callable[[str, nn.Module], None]

_LIVE: weakref.WeakSet[ResidentModels] = weakref.WeakSet()


def check_keep(keep: str) -> str:
    if keep not in KEEP:
        raise ConfigurationError(f"unknown `keep` '{keep}'; choose one of {', '.join(KEEP)}")
    return keep


class ResidentModels:
    """The models one pipeline has loaded, by name ("clip_l", "clip_g", "t5", "mmdit", "vae")."""

    def __init__(self, device: torch.device, on_load: OnLoad | None = None) -> None:
        self.device = device
        self.on_load = on_load or (lambda name, module: None)
        self.models: dict[str, nn.Module] = {}
        self.loads: Counter[str] = Counter()  # name -> how many times it was actually loaded
        _LIVE.add(self)

    def __contains__(self, name: str) -> bool:
        return name in self.models

    def get(
        self, name: str, load: Callable[[], nn.Module], prepare: Callable[[nn.Module], nn.Module] | None = None
    ) -> nn.Module:
        """The model `name`: the resident one, or `load()` it (then `on_load`, then `prepare`, e.g. compile)."""
        if name not in self.models:
            for other in list(_LIVE):
                if other is not self and other.models:
                    other.release()
            module = load()
            self.on_load(name, module)
            self.models[name] = prepare(module) if prepare else module
            self.loads[name] += 1
        return self.models[name]

    def release(self, *names: str) -> None:
        """Free the named models (all of them when none is named) and return their memory."""
        for name in names or list(self.models):
            self.models.pop(name, None)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()
