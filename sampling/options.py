"""Everything one `generate()` call is asked for, checked once and turned into a schedule once.

`GenerationOptions.resolve` fills what the caller left out from the pipeline's variant (steps, cfg,
shift, SLG: docs/reference.md §1), checks every value before any model is loaded, and computes the
sigma schedule. The number of steps is the schedule's: `sigmas=[1, 0.5, 0]` runs 2 steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from sd3.errors import ConfigurationError
from sd3.sampling.guidance import SkipLayerGuidanceConfig
from sd3.sampling.reference import Reference
from sd3.sampling.samplers import sampler as sampler_function
from sd3.sampling.schedules import explicit_sigmas, sigmas as schedule_sigmas
from sd3.sampling.variants import Variant
from sd3.vae.scaling import DECODE_TILE_OVERLAP


@dataclass(frozen=True)
class GenerationOptions:
    """A checked request: sizes, guidance, sampler and the schedule it runs (sigmas, float32, 1 -> 0)."""

    height: int
    width: int
    cfg: float
    shift: float
    seed: int
    num_images: int
    batch_size: int
    slg: SkipLayerGuidanceConfig | None
    sampler: str
    schedule: torch.Tensor = field(repr=False)  # (steps + 1,) sigmas ending at 0
    tile_size: int | None = None
    scheduler: str | None = None  # the schedule's name when the caller chose one (else the reference's)
    negative_zero: bool = False  # zero the negative conditioning, as ComfyUI's ConditioningZeroOut

    @property
    def steps(self) -> int:
        return len(self.schedule) - 1

    @classmethod
    def resolve(
        cls,
        variant: Variant | None,
        reference: Reference,
        *,
        height: int,
        width: int,
        steps: int | None,
        cfg: float | None,
        shift: float | None,
        seed: int,
        num_images: int,
        batch_size: int,
        slg: SkipLayerGuidanceConfig | bool | None,
        sampler: str,
        sigmas: list[float] | None,
        tile_size: int | None,
        scheduler: str | None = None,
        negative_zero: bool = False,
    ) -> GenerationOptions:
        """Fill defaults from `variant` (None: a pipeline built from files alone) and check everything.

        `slg`: None or False for none, True for the variant's settings, or explicit settings.
        `scheduler`: a schedule by name (sampling/schedules.py: the references' and ComfyUI's), in
        place of the reference's; `sigmas` overrides both.
        """
        source = f"variant {variant.which}" if variant else "a pipeline without a variant"
        if steps is None and sigmas is None:
            if variant is None:
                raise ConfigurationError("this pipeline has no variant to take defaults from: give `steps`")
            steps = variant.steps
        if cfg is None:
            if variant is None:
                raise ConfigurationError("this pipeline has no variant to take defaults from: give `cfg`")
            cfg = variant.cfg
        shift = variant.shift if shift is None and variant else 3.0 if shift is None else shift
        if slg is True:
            if variant is None or variant.slg is None:
                raise ConfigurationError(f"`slg=True` asks for the variant's skip-layer guidance, which {source} does not have")
            slg = variant.slg
        slg = slg or None
        for name, side in (("height", height), ("width", width)):
            if side < 16 or side % 16:
                raise ConfigurationError(f"`{name}` must be a positive multiple of 16, got {side}")
        for name, value in (("cfg", cfg), ("shift", shift)):
            if not math.isfinite(value):
                raise ConfigurationError(f"`{name}` must be a finite number, got {value}")
        for name, value in (("num_images", num_images), ("batch_size", batch_size)):
            if value < 1:
                raise ConfigurationError(f"`{name}` must be at least 1, got {value}")
        sampler_function(sampler)  # an unknown name is refused there
        if not isinstance(negative_zero, bool):
            raise ConfigurationError(f"`negative_zero` must be True or False, got {negative_zero!r}")
        if scheduler is not None and sigmas is not None:
            raise ConfigurationError("give `scheduler` or explicit `sigmas`, not both")
        if scheduler == reference.schedule:  # the reference's own: recorded as not chosen, so runs resume alike
            scheduler = None
        check_tile_size(tile_size)
        # steps, shift and explicit sigmas are checked where the schedule is made (sampling/schedules.py)
        schedule = (explicit_sigmas(sigmas) if sigmas is not None
                    else schedule_sigmas(scheduler or reference.schedule, steps, shift))
        return cls(
            height=height, width=width, cfg=cfg, shift=shift, seed=seed, num_images=num_images,
            batch_size=batch_size, slg=slg, sampler=sampler, schedule=schedule, tile_size=tile_size,
            scheduler=scheduler, negative_zero=negative_zero,
        )

    def describe(self) -> dict:
        """The settings that make an image what it is, as JSON values: a manifest line's and a PNG's
        `settings` (height, width, steps, cfg, shift, sampler, slg; and scheduler and negative_zero
        when chosen, so that manifests written before they existed still match)."""
        slg = None if self.slg is None else {"scale": self.slg.scale, "start": self.slg.start, "end": self.slg.end,
                                             "layers": list(self.slg.layers)}
        chosen = {"scheduler": self.scheduler} if self.scheduler is not None else {}
        if self.negative_zero:
            chosen["negative_zero"] = True
        return {"height": self.height, "width": self.width, "steps": self.steps, "cfg": self.cfg, "shift": self.shift,
                "sampler": self.sampler, "slg": slg, **chosen}


def check_tile_size(tile_size: int | None) -> None:
    """Refuse a `tile_size` (latent pixels) too small to blend: under twice the tiles' overlap."""
    if tile_size is not None and (not isinstance(tile_size, int) or isinstance(tile_size, bool)):
        raise ConfigurationError(f"`tile_size` must be a whole number of latent pixels, got {tile_size!r}")
    if tile_size is not None and tile_size < 2 * DECODE_TILE_OVERLAP:
        raise ConfigurationError(
            f"`tile_size` must be at least {2 * DECODE_TILE_OVERLAP} (twice the {DECODE_TILE_OVERLAP} latent pixels "
            f"that tiles overlap), got {tile_size}"
        )
