"""ControlNet inputs for a generation: the request, the control image's preparation, the residuals per step.

A `ControlInput` names a ControlNet file and its control image. Before any model loads, the file's
kind is read off its header (`check_inputs`, on the `meta` device) and the image is opened. Then the
image becomes a control latent (`encode`): resized to the output size, mapped to pixel values as the
chosen reference does (docs/reference.md §6, "ControlNet control images"), and through the VAE.
While denoising, `residuals` runs every ControlNet whose window holds the step and sums their
scaled outputs, as diffusers' `SD3MultiControlNetModel` does; the MMDiT adds them to its image
tokens (sd3/mmdit/model.py).

| reference | pixel values | the VAE's posterior |
|---|---|---|
| default, stability (Stability's sd3_infer.py `vae_encode`) | canny: x·255·0.5 + 0.5; blur, depth and 2B nets: 2x − 1 (x in [0, 1]) | its mean (Stability draws a sample; the mean makes the result depend on the seed alone) |
| diffusers (`StableDiffusion3ControlNetPipeline`) | 2x − 1 for every type | a sample per CFG half, drawn from the global RNG seeded with the seed |

diffusers' joint files (InstantX, alimama) exist only in diffusers' pipeline, so they are prepared
its way (2x − 1) under every reference; their control latent skips the VAE's shift factor, as
diffusers encodes it for them.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from sd3.errors import ConfigurationError
from sd3.checkpoint import open_checkpoint
from sd3.mmdit.controlnet import ControlNetConfig, control_image_type
from sd3.sampling import img2img

logger = logging.getLogger(__name__)

# Stability's recommended settings for its SD3.5-large ControlNets (sd3_infer.py, `CONFIGS`; its
# sampler there is euler, our default).
STABILITY_SETTINGS = {"steps": 60, "cfg": 3.5, "shift": 3.0}


def apply_stability_settings(stability: bool, settings: dict) -> None:
    """With one of Stability's nets (`stability`), the unset `steps`, `cfg` and `shift` in `settings`
    become its recommended ControlNet settings; an explicit schedule (`sigmas`) keeps its own."""
    if stability and settings.get("sigmas") is None:
        for key, value in STABILITY_SETTINGS.items():
            if settings.get(key) is None:
                settings[key] = value


@dataclass
class ControlInput:
    """One ControlNet and its control image for a generation.

    Attributes:
        model: the ControlNet's `.safetensors` path (Stability's or diffusers' layout).
        image: the control map (a path, a PIL image, or a (3, H, W) tensor in [0, 1] at the output size).
        scale: its residuals' weight (diffusers' `controlnet_conditioning_scale`).
        start, end: the fractions of the steps it acts between (diffusers' `control_guidance_start/end`):
            step i of N uses it when start ≤ i/N and (i + 1)/N ≤ end.
        mask: for an inpainting ControlNet (17 input channels, alimama's) only: white marks what to
            repaint; the image is the picture to complete (diffusers' `StableDiffusion3ControlNetInpaintingPipeline`).
    """

    model: str | os.PathLike
    image: str | os.PathLike | Image.Image | torch.Tensor
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mask: str | os.PathLike | Image.Image | torch.Tensor | None = None
    config: ControlNetConfig | None = field(default=None, repr=False)  # set by `check_inputs`
    control_image_type: str | None = field(default=None, repr=False)  # "canny", ...: Stability's files

    @property
    def name(self) -> str:
        """Its model's name in the pipeline's lifecycle."""
        return f"controlnet:{Path(self.model).expanduser().resolve()}"

    def active(self, step: int, steps: int) -> bool:
        return self.start <= step / steps and (step + 1) / steps <= self.end


def stability_layout(path: str | os.PathLike) -> bool:
    """Whether a ControlNet file is one of Stability's kinds (no text stream, so no `context_embedder`),
    read off its header. Raises ModelLoadingError for a file that is not an SD3 ControlNet."""
    from sd3.mmdit.controlnet_loading import check_is_controlnet

    with open_checkpoint(path) as checkpoint:
        check_is_controlnet(checkpoint)
        return "context_embedder.weight" not in checkpoint


def check_inputs(controls: Sequence[ControlInput] | None, architecture) -> list[ControlInput]:
    """Check every input before any model loads: numbers, the image (read now), and the file (its
    header, against the base MMDiT `architecture` built on `meta`: kind, width).

    Raises:
        ConfigurationError: a bad value, an unreadable image, a ControlNet for another model.
        ModelLoadingError: a missing file, or not an SD3 ControlNet.
    """
    from sd3.mmdit.controlnet_loading import load_controlnet

    if controls is None:
        return []
    if isinstance(controls, ControlInput):
        controls = [controls]
    checked = []
    for control in controls:
        if not isinstance(control, ControlInput):
            raise ConfigurationError(f"`control` takes ControlInput(model, image, ...) entries, got {control!r}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in (control.scale, control.start, control.end)):
            raise ConfigurationError("a ControlInput's scale, `start` and `end` must be finite numbers")
        if not 0 <= control.start < control.end <= 1:
            raise ConfigurationError(f"`start` must be below `end`, both in [0, 1], got {control.start} and {control.end}")
        path = Path(control.model).expanduser()
        if path.suffix.lower() != ".safetensors" or not path.is_file():
            raise ConfigurationError(f"`controlnet` {path}: a .safetensors file is needed, and none is there")
        try:
            net = load_controlnet(path, architecture.config, device="meta")  # reads the header, no weight
        except ConfigurationError as error:
            raise ConfigurationError(f"`controlnet` {path.name}: {error}") from None
        with open_checkpoint(path) as checkpoint:  # and Stability's one-number `control_type`
            kind = control_image_type(checkpoint.tensor("control_type")) if "control_type" in checkpoint else None
        image = img2img.open_image(control.image, "control_image")
        if net.config.inpainting != (control.mask is not None):
            raise ConfigurationError(
                f"`controlnet` {path.name} is an inpainting ControlNet: give its `control_mask`" if net.config.inpainting
                else f"`controlnet` {path.name} takes no `control_mask`: only an inpainting ControlNet (17 input channels) does")
        mask = None if control.mask is None else img2img.open_image(control.mask, "control_mask")
        checked.append(ControlInput(path, image, float(control.scale), float(control.start), float(control.end), mask,
                                    net.config, kind))
    return checked


def check_sizes(controls: Sequence[ControlInput], sizes: Sequence[tuple[int, int]], steps: Sequence[int] = ()) -> None:
    """Refuse, before any model loads, an image size a ControlNet cannot take: a joint net's position
    table smaller than the latent grid, or a control image given as a tensor of another size. Warn of
    a window (`start`, `end`) that holds none of the `steps` counts' steps."""
    for control in controls:
        for n in steps:
            if not any(control.active(i, n) for i in range(n)):
                logger.warning("ControlNet %s acts in no step of %d (start %s, end %s): each step i needs "
                               "start <= i/N and (i + 1)/N <= end", Path(control.model).name, n, control.start, control.end)
        for height, width in sizes:
            cfg = control.config
            side = cfg.pos_embed_max_size * cfg.patch_size * 8
            if cfg.kind == "joint" and (height > side or width > side):
                raise ConfigurationError(f"`controlnet` {Path(control.model).name} covers images up to {side}x{side} "
                                         f"pixels (its position table), not {height}x{width}")
            for name, image in (("control_image", control.image), ("control_mask", control.mask)):
                if isinstance(image, torch.Tensor) and tuple(image.shape[-2:]) != (height, width):
                    raise ConfigurationError(f"`{name}` as a tensor must be {height}x{width} pixels, got {tuple(image.shape)}")


def pixels(control: ControlInput, height: int, width: int, reference: str) -> torch.Tensor:
    """The control image resized to height x width (Lanczos) and mapped as `reference` (`Reference.control_pixels`:
    "stability" or "diffusers"; the module's table) says -> (1, 3, height, width) float32."""
    signed = img2img.preprocess_image(control.image, height, width, "control_image")  # 2x - 1, x in [0, 1]
    stability_canny = reference == "stability" and control.config.kind == "stability-8b" and \
        control.control_image_type == "canny"
    return ((signed + 1) / 2) * 255 * 0.5 + 0.5 if stability_canny else signed


def encode(vae: nn.Module, control: ControlInput, height: int, width: int, reference: str, posterior: str,
           rows: int, generator: torch.Generator, guided: bool) -> torch.Tensor:
    """The control latent for a CFG batch of `rows` rows (`guided`: two halves): (rows, C, height/8, width/8)
    float32, C the net's 16 channels, or 17 with an inpainting net's mask (1 where the image is kept).

    `posterior` "mean": one latent for every row; "sample": each row its own draw from `generator`,
    which stands for diffusers' global RNG seeded with the seed: one generator serves a batch's nets in
    order, as diffusers draws them one after another (it encodes the image repeated for the batch;
    its inpainting pipeline encodes before repeating for the CFG halves, so they share draws)."""
    cfg = vae.config
    x = pixels(control, height, width, reference)
    if control.mask is not None:  # the masked image: what to repaint set to black (-1)
        x = torch.where(img2img.binary_mask(control.mask, height, width) > 0.5, -1.0, x)
    with torch.no_grad():
        mean, logvar = (t.float().cpu() for t in vae.encode_distribution(x.to(next(vae.parameters()).device, vae.dtype)))
    if posterior == "sample":
        draws = rows // 2 if guided and control.mask is not None else rows
        noise = torch.randn((draws, *mean.shape[1:]), generator=generator)
        z = (mean + torch.exp(0.5 * logvar) * noise).repeat(rows // draws, 1, 1, 1)
    else:
        z = mean.expand(rows, -1, -1, -1)
    shift = cfg.shift_factor if control.config.latent_shift else 0.0
    latent = (z - shift) * cfg.scaling_factor
    if control.mask is not None:
        kept = 1 - img2img.preprocess_mask(control.mask, height, width)  # (1, 1, h, w)
        latent = torch.cat([latent, kept.expand(rows, -1, -1, -1)], dim=1)
    return latent


def register(pipe, inputs: Sequence[ControlInput]) -> None:
    """Make each input's ControlNet a model of `pipe`'s lifecycle: its loader, its size for the memory
    checks (sampling/memory.py), and the stage that holds them (`stage_name`), so that `keep` frees
    or keeps them with the rest and the memory checks count them. Loads nothing."""
    from sd3.mmdit.controlnet_loading import load_controlnet
    from sd3.sampling.lifecycle import Stage
    from sd3.sampling.memory import weight_bytes

    for control in inputs:
        if control.name not in pipe.lifecycle.loaders:
            pipe.lifecycle.loaders[control.name] = functools.partial(
                load_controlnet, control.model, pipe.mmdit_config, dtype=pipe.dtype, device=pipe.device)
            with open_checkpoint(control.model) as checkpoint:
                pipe.memory.weights[control.name] = weight_bytes(checkpoint, pipe.dtype)
    stage = Stage(tuple(c.name for c in inputs), "ControlNet", 'use `dtype="bfloat16"` or fewer ControlNets', "denoise")
    pipe.lifecycle.stages = {**pipe.lifecycle.stages, stage_name(inputs): stage}


def after_last_block(reference, inputs: Sequence[ControlInput]) -> bool:
    """Whether the MMDiT's last block gets a residual: as `reference.control_after_last_block` says
    for Stability's nets; never with a joint net, which only diffusers runs (and trained) that way."""
    return reference.control_after_last_block and all(c.config.kind != "joint" for c in inputs)


def stage_name(inputs: Sequence[ControlInput]) -> str:
    """The lifecycle stage that holds these ControlNets (one per set, so calls never share one)."""
    return "control " + " ".join(sorted(c.name for c in inputs))


def rows(latent: torch.Tensor, n: int, part: slice, guided: bool) -> torch.Tensor:
    """The rows of a control latent made for a CFG batch of n images (2n rows, halves in batch order,
    or n unguided) that belong to the images `part`."""
    if not guided:
        return latent[part]
    return torch.cat([latent[:n][part], latent[n:][part]])


@dataclass
class ActiveControl:
    """A ControlNet ready for the sampler: the loaded net, its control latent for the CFG batch, its window."""

    net: nn.Module
    latent: torch.Tensor  # (rows of the model's batch, 16 or 17, h, w), on the model's device
    input: ControlInput


def residuals(controls: Sequence[ActiveControl], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
              context: torch.Tensor, base: nn.Module, step: int, steps: int) -> list[torch.Tensor] | None:
    """The summed, scaled residuals of every control active at `step` for one MMDiT call on x (b, 16, h, w);
    None when none is active."""
    total = None
    for control in controls:
        if not control.input.active(step, steps):
            continue
        out = [control.input.scale * r for r in control.net(x, t, y, context, control.latent, base)]
        total = out if total is None else [a + b for a, b in zip(total, out)]
    return total
