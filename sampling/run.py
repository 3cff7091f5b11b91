"""The one place the stages run, in Candle's main.rs order, for `generate()` and `generate_many()` alike.

    encode the text  ->  start latents  ->  denoise  ->  decode

`render(pipe, work)` runs a checked `Work` (batches of image requests, built by sampling/checks.py)
through the pipeline's public stages and yields each batch's images as soon as they are decoded.
Where the models go between stages is the lifecycle's business (sampling/lifecycle.py):

- models kept loaded (a call that fits): each batch is denoised and decoded before the next starts,
  so the first image comes back after one batch's work;
- staged (one stage's models at a time): every batch is denoised before the VAE loads, and each
  stage's models load once for the whole work.

Batches are fixed by global index (index // batch size, split where settings change). Text is
encoded in one of two fixed ways. `generate()` encodes its whole prompt list in one pass, as
diffusers' `encode_prompt` does, so `generate(conditioning=pipe.encode(prompts))` gives the same
bytes. `generate_many()` encodes one batch at a time, each image's texts a row of their own, so an
image's bytes do not depend on how the list was chunked, resumed or sharded. Matrix kernels are not
batch-invariant (a row's result can depend on how many rows share the call): hence fixed rules.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from PIL import Image

from sd3.sampling import control, img2img
from sd3.sampling.conditioning import Conditioning
from sd3.sampling.noise import NoiseStreams, initial_noise, scale_noise
from sd3.sampling.options import GenerationOptions
from sd3.sampling.previews import Preview
from sd3.sampling.requests import ImageRequest, settings_key
from sd3.sampling.samplers import StepCallback


@dataclass
class Batch:
    """Images denoised and decoded together: consecutive global indices, one set of options."""

    requests: list[ImageRequest]
    options: GenerationOptions

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.requests]

    @property
    def indices(self) -> list[int]:
        return [r.index for r in self.requests]


@dataclass
class Edit:
    """Image to image (and, with a mask, inpainting): the image every batch starts from."""

    image: Image.Image | torch.Tensor
    mask: Image.Image | torch.Tensor | None
    strength: float


def largest(options: list[GenerationOptions]) -> GenerationOptions:
    """The options with the most pixels per batch: they size a call's memory decisions."""
    return max(options, key=lambda o: o.height * o.width * o.batch_size)


@dataclass
class Work:
    """A checked request, ready to run.

    Attributes:
        batches: in global-index order.
        encode_per_batch: generate_many's rule, each batch's texts encoded alone, every image's a
            row of its own; False: generate's, the whole list in one pass, one row per prompt.
        conditioning: the caller's, one row per prompt (then nothing is encoded).
        latents: the caller's initial noise, (1 or n, 16, h, w), a row per image index.
        edit: image to image or inpainting, or None.
        largest: the options that size the residency decision (default: the largest batch's).
        controls: the ControlNets every batch uses, with their control images.
    """

    batches: list[Batch]
    encode_per_batch: bool = False
    conditioning: Conditioning | None = None
    latents: torch.Tensor | None = None
    edit: Edit | None = None
    largest: GenerationOptions | None = field(default=None)
    controls: list[control.ControlInput] = field(default_factory=list)  # ControlNets, checked (sampling/control.py)
    streams: NoiseStreams = field(default_factory=NoiseStreams)  # ComfyUI's batch noise, shared by a run's chunks

    def __post_init__(self) -> None:
        self.largest = self.largest or largest([b.options for b in self.batches])

    @property
    def requests(self) -> list[ImageRequest]:
        return [r for batch in self.batches for r in batch.requests]


@dataclass
class Rendered:
    batch: Batch
    latents: torch.Tensor  # (b, 16, h, w) float32 on the CPU: the final latents, before decoding
    images: list[Image.Image]
    seconds: float  # the batch's denoising and decoding time (loads excluded)


@dataclass
class GenerationResult:
    images: list[Image.Image]
    latents: torch.Tensor  # final model-space latents (n, 16, h, w), float32, before decoding
    seeds: list[int]
    prompts: list[str]
    negative_prompts: list[str]
    steps: int  # denoising steps per image (the schedule's length minus one)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: load, encode, denoise, decode
    requests: list[ImageRequest] = field(default_factory=list)  # one per image: its index, texts and seed
    options: GenerationOptions | None = None  # the checked settings (image to image: the schedule it ran)


def result(work: Work, rendered: list[Rendered], timings) -> GenerationResult:
    """`generate()`'s result from its rendered batches and the call's `Timings`."""
    requests = work.requests
    return GenerationResult(
        images=[image for r in rendered for image in r.images], latents=torch.cat([r.latents for r in rendered]),
        seeds=[r.seed for r in requests], prompts=[r.prompt for r in requests],
        negative_prompts=[r.negative_prompt for r in requests], steps=work.largest.steps,
        timings=timings.as_dict(), requests=requests, options=work.largest,
    )


def batches(requests: list[ImageRequest], options_of: Callable[[ImageRequest], GenerationOptions],
            batch_size: int) -> list[Batch]:
    """Requests grouped into batches by global index (index // batch_size), split where settings change."""
    out: list[Batch] = []
    for request in requests:
        last = out[-1] if out else None
        if (last and settings_key(last.requests[-1]) == settings_key(request)
                and last.requests[-1].index // batch_size == request.index // batch_size):
            last.requests.append(request)
        else:
            out.append(Batch([request], options_of(request)))
    return out


def render(pipe, work: Work, *, on_step: StepCallback | None = None, attention_backend=None,
           quiet: bool = True) -> Iterator[Rendered]:
    """Run `work` through `pipe`'s stages; yield each batch, decoded, in order.

    Args:
        on_step: called after every denoising step (see `StableDiffusion3.denoise`).
        attention_backend: a context manager around each denoising (e.g. torch's `sdpa_kernel`).
        quiet: no progress bar.
    """
    life = pipe.lifecycle
    call = life.start(work.largest, [c.name for c in work.controls])
    need = pipe.memory.activations(work.largest, life.context_tokens)  # bytes, for the memory checks
    vae_shift = work.edit is None or work.edit.mask is None or pipe.reference.inpaint_decode_shift
    settings = dict(on_step=on_step, attention_backend=attention_backend, quiet=quiet)
    try:
        with life.using(call):
            conditionings = _encode(pipe, work)  # 1. text -> conditioning (or the caller's)
            starts = _starts(pipe, work, need["vae"])  # 2. the seeds' noise, the caller's latents, or the image noised
            controls = _controls(pipe, work, need["vae"])  # 2b. control images through the VAE
        if call.keeping:  # 3, 4: denoise and decode each batch; the models stay loaded anyway
            for batch, cond, (start, blend), ctrl in zip(work.batches, conditionings, starts, controls):
                with life.using(call):
                    begin = time.perf_counter()
                    latents = pipe.denoise(cond, start, batch.options, blend=blend, indices=batch.indices, controls=ctrl,
                                           **settings)
                    images = _decode(pipe, batch, latents, vae_shift)
                yield Rendered(batch, latents, images, time.perf_counter() - begin)
            return
        finished = []
        lent = on_step.model if isinstance(on_step, Preview) else None  # a preview's decoder, loaded once too
        with life.using(call), life.hold("denoise", need["mmdit"]), \
                life.hold(control.stage_name(work.controls)) if work.controls else contextlib.nullcontext(), \
                life.hold(f"preview_{lent}", need["vae"]) if lent else contextlib.nullcontext():  # 3. every batch
            for batch, cond, (start, blend), ctrl in zip(work.batches, conditionings, starts, controls):
                begin = time.perf_counter()
                latents = pipe.denoise(cond, start, batch.options, blend=blend, indices=batch.indices, controls=ctrl,
                                       **settings)
                finished.append((batch, latents, time.perf_counter() - begin))
        call.pinned.update(life.stages["decode"].models)  # 4. decode once the MMDiT is freed; its decoder loads once
        for batch, latents, seconds in finished:
            with life.using(call):
                begin = time.perf_counter()
                images = _decode(pipe, batch, latents, vae_shift)
            yield Rendered(batch, latents, images, seconds + time.perf_counter() - begin)
    finally:
        life.finish(call)


def _encode(pipe, work: Work) -> list[Conditioning]:
    """Each batch's conditioning, one row per image; its negative zeroed where the options say so."""
    if work.conditioning is not None:  # one row per prompt, in prompt order
        out = [work.conditioning.rows([r.prompt_index for r in b.requests]) for b in work.batches]
    else:
        with pipe.lifecycle.hold("encode"):  # the encoders load once for every pass
            if work.encode_per_batch:
                out = [pipe.encode([r.prompt for r in b.requests], [r.negative_prompt for r in b.requests])
                       for b in work.batches]
            else:
                texts = list(dict.fromkeys(r.text for r in work.requests))  # (prompt index, prompt, negative)
                encoded = pipe.encode([t[1] for t in texts], [t[2] for t in texts])
                out = [encoded.rows([texts.index(r.text) for r in b.requests]) for b in work.batches]
    return [c.zero_negative() if b.options.negative_zero else c for b, c in zip(work.batches, out)]


def _controls(pipe, work: Work, activation: int) -> list[list[tuple[control.ControlInput, torch.Tensor]]]:
    """Each batch's ControlNets with their control latents, made for its CFG batch (sampling/control.py);
    the VAE loads once for all of them."""
    if not work.controls:
        return [[] for _ in work.batches]
    ref, out = pipe.reference, []
    with pipe.lifecycle.hold("encode_image", activation) as models:
        for batch in work.batches:
            o, generator = batch.options, torch.Generator().manual_seed(batch.requests[0].seed)
            guided = o.cfg != 1.0 or ref.uncond_at_cfg_one
            n = len(batch.requests) * (2 if guided else 1)
            out.append([(c, control.encode(models["vae"], c, o.height, o.width, ref.control_pixels, ref.posterior, n,
                                           generator, guided)) for c in work.controls])
    return out


def _starts(pipe, work: Work, activation: int) -> list[tuple[torch.Tensor, img2img.Blend | None]]:
    """Each batch's start latents (b, 16, h, w) float32 and, when inpainting, its per-step blend."""
    if work.edit is None:
        return [(_noise(pipe, work, batch), None) for batch in work.batches]
    encoded = {}  # the image through the VAE once per size, every seed at once: (x0, noise) by image index
    with pipe.lifecycle.hold("encode_image", activation):
        for size in dict.fromkeys((b.options.height, b.options.width) for b in work.batches):
            requests = [r for b in work.batches if (b.options.height, b.options.width) == size for r in b.requests]
            x0, noise = pipe.encode_image(work.edit.image, [r.seed for r in requests], height=size[0], width=size[1])
            encoded.update({r.index: (x0[k], noise[k]) for k, r in enumerate(requests)})
    out = []
    for batch in work.batches:
        opts = batch.options
        x0, noise = (torch.stack(part) for part in zip(*(encoded[r.index] for r in batch.requests)))
        blend = None
        if work.edit.mask is not None:
            blend = img2img.Blend(x0, noise, img2img.preprocess_mask(work.edit.mask, opts.height, opts.width),
                                  opts.schedule)
        out.append((img2img.noised(x0, noise, opts.schedule[0]), blend))
    return out


def _noise(pipe, work: Work, batch: Batch) -> torch.Tensor:
    """The batch's start for text to image: its noise (the caller's `latents`, or drawn by the
    reference's rule), scaled to the schedule's first σ where the reference does so (ComfyUI)."""
    opts, ref = batch.options, pipe.reference
    if work.latents is not None:
        noise = work.latents[[0 if work.latents.shape[0] == 1 else r.index for r in batch.requests]].float()
    elif ref.noise == "batch":
        noise = work.streams.rows([r.stream for r in batch.requests], 16, opts.height // 8, opts.width // 8)
    else:
        noise = initial_noise(batch.seeds, 16, opts.height // 8, opts.width // 8)
    return scale_noise(noise, opts.schedule[0]) if ref.noise_scaling else noise


def _decode(pipe, batch: Batch, latents: torch.Tensor, vae_shift: bool) -> list[Image.Image]:
    opts = batch.options
    return pipe.decode(latents, batch_size=opts.batch_size, tile_size=opts.tile_size, vae_shift=vae_shift)
