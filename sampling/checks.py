"""The check layer: a request checked whole, against the variant and the checkpoint, before any model loads.

`GenerationOptions.resolve` (sampling/options.py) checks each value; these add what only the
pipeline knows: the checkpoint's position table (the largest image), its number of blocks (SLG
layers), its context width (a saved conditioning), and how the images, prompts, initial latents and
image to image fit together. `StableDiffusion3` offers `options` and `check` as its methods;
`generate_many` uses `work`. Every refusal is a `ConfigurationError`, but for a prompt longer than
untruncated T5 takes (a `TextEncodingError`, as the tokenizer raises it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from dataclasses import replace

import torch

from sd3.errors import ConfigurationError
from sd3.vae import load_taesd
from sd3.sampling import control as control_lib
from sd3.sampling import img2img, run
from sd3.sampling.conditioning import Conditioning
from sd3.sampling.guidance import SkipLayerGuidanceConfig
from sd3.sampling.noise import check_latents
from sd3.sampling.options import GenerationOptions
from sd3.sampling.previews import Preview
from sd3.sampling.requests import ImageRequest, image_requests, settings_key

DEFAULT_STRENGTH = 0.6  # image to image without a `strength` (diffusers' default)
DECODERS = {"vae": "vae", "taesd3": "taesd"}  # what decodes the final images -> the model that does it
SETTINGS = ("height", "width", "steps", "cfg", "shift", "seed", "num_images", "batch_size", "slg", "sampler_name",
            "sigmas", "tile_size", "scheduler", "negative_zero")  # what `options()` takes besides `strength`


def options(
    pipe,
    *,
    height: int = 1024,
    width: int = 1024,
    steps: int | None = None,
    cfg: float | None = None,
    shift: float | None = None,
    seed: int = 0,
    num_images: int = 1,
    batch_size: int = 1,
    slg: SkipLayerGuidanceConfig | bool | None = None,
    sampler_name: str = "euler",
    sigmas: Sequence[float] | None = None,
    tile_size: int | None = None,
    scheduler: str | None = None,
    negative_zero: bool = False,
    strength: float | None = None,
) -> GenerationOptions:
    """`generate()`'s settings, filled from the variant and checked against this checkpoint.

    `strength` (image to image) keeps the last part of the schedule (sampling/img2img.py).

    Raises:
        ConfigurationError: any value out of range; a size beyond the checkpoint's position
            table; SLG layers the MMDiT does not have.
    """
    options = GenerationOptions.resolve(
        pipe.variant, pipe.reference, height=height, width=width, steps=steps, cfg=cfg, shift=shift, seed=seed,
        num_images=num_images, batch_size=batch_size, slg=slg, sampler=sampler_name,
        sigmas=list(sigmas) if sigmas is not None else None, tile_size=tile_size, scheduler=scheduler,
        negative_zero=negative_zero,
    )
    limit = pipe.mmdit_config.max_image_size  # the checkpoint's position table
    for name, side in (("height", options.height), ("width", options.width)):
        if side > limit:
            raise ConfigurationError(f"`{name}` {side} exceeds this checkpoint's limit of {limit} pixels (its position table)")
    depth = pipe.mmdit_config.depth
    if options.slg is not None and any(not 0 <= i < depth for i in options.slg.layers):
        raise ConfigurationError(f"SLG layers {list(options.slg.layers)} do not exist: this MMDiT has blocks "
                                 f"0..{depth - 1}, so `slg` cannot skip them")
    if strength is not None:
        skip = img2img.start_index(options.steps, strength, pipe.reference.img2img_start)  # < steps for strength > 0
        options = replace(options, schedule=options.schedule[skip:])
    return options


def check_conditioning(pipe, conditioning: Conditioning) -> None:
    """Refuse a `conditioning` whose widths are not this MMDiT's (context (n, l, d), y (n, p))."""
    cfg = pipe.mmdit_config
    if conditioning.context.shape[-1] != cfg.context_dim or conditioning.y.shape[-1] != cfg.adm_in_channels:
        raise ConfigurationError(
            f"the `conditioning` has context width {conditioning.context.shape[-1]} and pooled width "
            f"{conditioning.y.shape[-1]}; this MMDiT takes {cfg.context_dim} and {cfg.adm_in_channels}"
        )


def check_decoder(decoder: str, taesd) -> None:
    """Refuse an unknown final-image `decoder`, "taesd3" without its file (`taesd`, a path or None),
    or a TAESD3 file that is not one: its names and shapes are checked, no tensor is read."""
    if decoder not in DECODERS:
        raise ConfigurationError(f"unknown `decoder` '{decoder}'; choose one of {', '.join(DECODERS)}")
    if decoder == "taesd3" and taesd is None:
        raise ConfigurationError('`decoder="taesd3"` needs a TAESD3 file: give `files["taesd"]`')
    if taesd is not None:
        if not Path(taesd).is_file():
            raise ConfigurationError(f'`files["taesd"]` {taesd}: file not found')
        load_taesd(taesd, device="meta")


def check_callback(on_step, taesd) -> None:
    """Refuse, before anything loads, a taesd `Preview` without a TAESD3 file (`taesd`, a path or None)."""
    if isinstance(on_step, Preview) and on_step.model == "taesd" and taesd is None:
        raise ConfigurationError('a taesd preview needs a TAESD3 file: give `files["taesd"]`')


def edit(init_image, strength: float | None, mask) -> run.Edit | None:
    """Image to image's inputs, opened and checked (sampling/img2img.py), or None without an image."""
    image, mask_image = img2img.check_inputs(init_image, strength, mask)
    if image is None:
        return None
    return run.Edit(image, mask_image, DEFAULT_STRENGTH if strength is None else strength)


def request_options(pipe, request: ImageRequest, settings: dict, edit: run.Edit | None = None) -> GenerationOptions:
    """The checked options of one request: `settings` (as for `options()`) with its own settings winning."""
    return pipe.options(**{**settings, **request.settings}, strength=edit.strength if edit else None)


def work(pipe, requests: list[ImageRequest], settings: dict, *, edit: run.Edit | None = None,
         encode_per_batch: bool = False, conditioning: Conditioning | None = None,
         latents: torch.Tensor | None = None, control: list[control_lib.ControlInput] = ()) -> run.Work:
    """`requests` in batches, every distinct setting checked (`settings` as for `options()`, each
    request's own settings winning): the `Work` that sampling/run.py runs.

    Raises:
        ConfigurationError: a bad setting, or two requests with one index.
        TextEncodingError: a prompt longer than untruncated T5 takes (clip/tokenizer.py)."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ConfigurationError(f"unknown settings {unknown}; the settings are {', '.join(SETTINGS)}")
    if len({r.index for r in requests}) != len(requests):
        raise ConfigurationError("two image requests share one index: each image needs its own")
    options = {}  # each distinct setting checked once, before anything loads
    for request in requests:
        if settings_key(request) not in options:
            options[settings_key(request)] = request_options(pipe, request, settings, edit)
    if conditioning is None:
        check_text_lengths(pipe, requests)
    control_lib.check_sizes(control, sorted({(o.height, o.width) for o in options.values()}),
                            sorted({o.steps for o in options.values()}))
    batches = run.batches(requests, lambda request: options[settings_key(request)], settings.get("batch_size", 1))
    return run.Work(batches, encode_per_batch, conditioning=conditioning, latents=latents, edit=edit,
                    controls=list(control))


def controls(pipe, control, settings: dict) -> list[control_lib.ControlInput]:
    """Check the ControlNet inputs (sampling/control.py) against this checkpoint, before any model loads.
    With one of Stability's nets, the unset `steps`, `cfg` and `shift` in `settings` become Stability's
    recommended ControlNet settings (sd3_infer.py: 60 steps, cfg 3.5, shift 3, euler)."""
    checked = control_lib.check_inputs(control, pipe.components.architectures()["mmdit"])
    control_lib.register(pipe, checked)  # loaders and sizes only: nothing loads
    control_lib.apply_stability_settings(any(c.config.kind != "joint" for c in checked), settings)
    return checked


def check_text_lengths(pipe, requests: list[ImageRequest]) -> None:
    """Untruncated T5 (`Reference.t5_truncate` False) refuses a prompt longer than MAX_T5_TOKENS, and
    ComfyUI's rules one of more than MAX_CLIP_CHUNKS CLIP chunks: tokenize every text now
    (milliseconds), so that the refusal comes before any model loads."""
    tokenizers, texts = pipe.components.tokenizers(), sorted({t for r in requests for t in (r.prompt, r.negative_prompt)})
    if tokenizers["t5"] is not None and not tokenizers["t5"].truncate:
        tokenizers["t5"](texts)
    if pipe.reference.prompt_rules == "comfyui":
        for text in texts:
            tokenizers["clip_l"].weighted(text)


def check(pipe, prompts, negative_prompts=None, *, latents=None, init_image=None, strength=None, mask=None,
          conditioning: Conditioning | str | os.PathLike | None = None, control=None, **settings) -> run.Work:
    """A `generate()` request checked whole, against this checkpoint, before any model loads: the
    `Work` that sampling/run.py runs (`settings` as for `options()`).

    Raises:
        ConfigurationError: as `generate()` says."""
    start = edit(init_image, strength, mask)
    checked = controls(pipe, control, settings)
    if start is not None and latents is not None:
        raise ConfigurationError("`latents` and `init_image` do not go together: the image sets the start")
    if isinstance(conditioning, (str, os.PathLike)):
        conditioning = Conditioning.load(conditioning)
    if conditioning is not None:
        check_conditioning(pipe, conditioning)
        if negative_prompts is not None:
            raise ConfigurationError("`negative_prompts` are inside the `conditioning`: give one or the other")
        prompts = [""] * len(conditioning) if prompts is None else prompts
    elif prompts is None:
        raise ConfigurationError("give `prompts`, or a `conditioning` from encode()")
    options = pipe.options(**settings, strength=start.strength if start else None)  # named before the prompts
    requests = image_requests(prompts, negative_prompts, seed=options.seed, num_images=options.num_images)
    if conditioning is not None and len(conditioning) != requests[-1].prompt_index + 1:
        raise ConfigurationError(f"the `conditioning` has {len(conditioning)} rows for "
                                 f"{requests[-1].prompt_index + 1} `prompts`: one row per prompt")
    if latents is not None:
        check_latents(latents, len(requests), options.height, options.width)
    return work(pipe, requests, settings, edit=start, conditioning=conditioning, latents=latents, control=checked)
