"""Classifier-free guidance and skip-layer guidance around the MMDiT's velocity prediction.

CFG (Ho & Salimans, arXiv 2207.12598): v = v_uncond + cfg * (v_cond - v_uncond).
SLG (used by SD3.5-medium; Candle's `SkipLayerGuidanceConfig` in stable-diffusion-3/sampling.rs):
inside a window of steps, one more conditional pass that skips some blocks, and
v += scale * (v_cond - v_cond_skipped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from sd3.mmdit.model import MMDiT
from sd3.sampling.control import ActiveControl, residuals
from sd3.sampling.conditioning import Conditioning


@dataclass(frozen=True)
class SkipLayerGuidanceConfig:
    """Skip-layer guidance: active when steps * start < step < steps * end (as Candle and diffusers)."""

    scale: float = 2.5
    start: float = 0.01
    end: float = 0.2
    layers: tuple[int, ...] = (7, 8, 9)

    def active(self, step: int, steps: int) -> bool:
        return steps * self.start < step < steps * self.end


class GuidedVelocity:
    """v(x, sigma, step) for latents x (b, 16, h, w): the guided velocity one sampler step uses.

    Args:
        model: the MMDiT.
        cond: conditioning for the prompts and the negative prompts.
        cfg: guidance scale; at 1 the unconditional pass is skipped unless `uncond_at_cfg_one`.
        slg: skip-layer guidance, or None (the pipeline checks its layers before anything loads).
        steps: the schedule's number of steps (for SLG's window).
        uncond_first: batch order [uncond, cond] (diffusers) instead of [cond, uncond] (Candle,
            Stability); the result is the same up to rounding.
        uncond_at_cfg_one: run the unconditional pass even at cfg = 1 (Candle and Stability do).
        controls: ControlNets (sampling/control.py) whose residuals the guided passes get; the
            skip-layer pass runs without them, as Stability's `SkipLayerCFGDenoiser` does.
        controls_after_last_block: whether the MMDiT's last block gets a residual (`MMDiT.forward`).

    Rows whose contexts differ in length (`Conditioning.lengths`) go to the model in one call per
    length, each at its own length, as ComfyUI runs conditionings of different shapes apart.
    """

    def __init__(
        self,
        model: MMDiT,
        cond: Conditioning,
        *,
        cfg: float,
        slg: SkipLayerGuidanceConfig | None,
        steps: int,
        uncond_first: bool = False,
        uncond_at_cfg_one: bool = False,
        controls: Sequence[ActiveControl] = (),
        controls_after_last_block: bool = True,
    ) -> None:
        self.model, self.cond, self.cfg, self.slg, self.steps = model, cond, cfg, slg, steps
        self.controls, self.controls_after_last_block = controls, controls_after_last_block
        self.uncond_first = uncond_first
        self.guided = cfg != 1.0 or uncond_at_cfg_one
        # Both halves of the CFG batch, concatenated once rather than every step.
        pairs = [(cond.negative_context, cond.context), (cond.negative_y, cond.y)]
        if not uncond_first:
            pairs = [(b, a) for a, b in pairs]
        self.batch_context = torch.cat(pairs[0])
        self.batch_y = torch.cat(pairs[1])
        lengths = None
        if cond.lengths is not None:
            lengths = torch.cat([cond.negative_lengths, cond.lengths] if uncond_first else [cond.lengths, cond.negative_lengths])
        self.batch_lengths = _groups(lengths, self.batch_context.shape[1])
        self.cond_lengths = _groups(cond.lengths, cond.context.shape[1])

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        """x (b, 16, h, w) float32, sigma a 0-d float32 tensor -> v (b, 16, h, w) float32."""
        t = (sigma * 1000).to(x.device)
        if not self.guided:
            v_cond = self._model(x, t, self.cond.y, self.cond.context, step, self.cond_lengths).float()
            v = v_cond
        else:
            both = self._model(torch.cat([x, x]), t, self.batch_y, self.batch_context, step, self.batch_lengths).float()
            first, second = both.chunk(2)
            v_uncond, v_cond = (first, second) if self.uncond_first else (second, first)
            v = v_uncond + self.cfg * (v_cond - v_uncond)
        if self.slg is not None and self.slg.active(step, self.steps):
            v_skip = self._model(x, t, self.cond.y, self.cond.context, step, self.cond_lengths,
                                 skip=True).float()
            v = v + self.slg.scale * (v_cond - v_skip)
        return v

    def _model(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, context: torch.Tensor, step: int,
               groups: list[tuple[torch.Tensor | None, int]], skip: bool = False) -> torch.Tensor:
        """The MMDiT on every row, one call per context length (`_groups`), with the residuals of the
        ControlNets active at `step` (none for a skip-layer pass, as Stability's `SkipLayerCFGDenoiser`)."""
        out = None
        for rows, length in groups:
            pick = (lambda a: a) if rows is None else (lambda a: a[rows.to(a.device)])
            controls = [] if skip else [c if rows is None else replace(c, latent=pick(c.latent)) for c in self.controls]
            part = self._call(pick(x), t, pick(y), pick(context)[:, :length], step, controls, skip)
            if rows is None:
                return part
            out = part.new_empty((x.shape[0], *part.shape[1:])) if out is None else out
            out[rows.to(out.device)] = part
        return out

    def _call(self, x, t, y, context, step, controls, skip: bool) -> torch.Tensor:
        if skip:  # the skip-layer pass: without the skipped blocks, and without ControlNets
            return self.model(x, t, y, context, skip_layers=self.slg.layers)
        if not controls:
            return self.model(x, t, y, context)
        extra = residuals(controls, x, t.expand(x.shape[0]), y, context, self.model, step, self.steps)
        return self.model(x, t, y, context, controls=extra, controls_after_last_block=self.controls_after_last_block)


def _groups(lengths: torch.Tensor | None, full: int) -> list[tuple[torch.Tensor | None, int]]:
    """[(row indices, context length)]: one group per length in first-seen order, or [(None, l)] when
    every row has one length l (all rows in one call)."""
    if lengths is None:
        return [(None, full)]
    distinct = list(dict.fromkeys(lengths.tolist()))
    if len(distinct) == 1:
        return [(None, distinct[0])]
    return [(torch.nonzero(lengths == n).flatten(), n) for n in distinct]
