"""The one place the stages run, in Candle's main.rs order, for `generate()` and `generate_many()` alike.

    encode the text  ->  start latents  ->  denoise  ->  decode

`render(pipe, work)` runs a checked `Work` (a list of batches, built by `StableDiffusion3.check`)
through the pipeline's public stages and yields each batch's images as soon as they are decoded.
Where the models go between stages is the lifecycle's business (sampling/lifecycle.py):

- models kept loaded (a call that fits): each batch is denoised and decoded before the next starts,
  so the first image comes back after one batch's work;
- staged (one stage's models at a time): every batch is denoised before the VAE loads, and each
  stage's models load once for the whole work.

Batches are fixed by global index (index // batch size, split where settings change) and text is
encoded one group at a time: `generate()` encodes its whole prompt list in one pass, as diffusers'
`encode_prompt` does (so `generate(conditioning=pipe.encode(prompts))` gives the same bytes), and
`generate_many()` encodes one batch at a time, each image's texts a row of their own, so an image's
bytes do not depend on how the list was chunked, resumed or sharded. Matrix kernels are not batch-invariant: a row's result can depend on
how many rows share the call, which is why both rules are fixed rather than left to chance.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from PIL import Image
from tqdm.auto import tqdm

from sd3.sampling import img2img
from sd3.sampling.conditioning import Conditioning
from sd3.sampling.noise import initial_noise
from sd3.sampling.options import GenerationOptions
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


@dataclass
class Edit:
    """Image to image (and, with a mask, inpainting): the image every batch starts from."""

    image: Image.Image | torch.Tensor
    mask: Image.Image | torch.Tensor | None
    strength: float


@dataclass
class Work:
    """A checked request, ready to run.

    Attributes:
        batches: in global-index order.
        text_groups: each a list of batch positions whose texts are encoded in one pass.
        text_per_image: every image's texts are rows of their own, even when it repeats a prompt of
            its batch (generate_many's rule); False: the images of one prompt share its rows.
        conditioning: the caller's, one row per prompt (then nothing is encoded).
        latents: the caller's initial noise, (1 or n, 16, h, w), a row per image index.
        edit: image to image or inpainting, or None.
        on_step: called after every step with (step, steps, latents).
        attention_backend: a context manager around denoising (e.g. torch's `sdpa_kernel`).
        quiet: no progress bar.
    """

    batches: list[Batch]
    text_groups: list[list[int]]
    text_per_image: bool = False
    conditioning: Conditioning | None = None
    latents: torch.Tensor | None = None
    edit: Edit | None = None
    on_step: StepCallback | None = None
    attention_backend: Callable | None = None
    quiet: bool = True
    largest: GenerationOptions = field(init=False)  # the batch with the most pixels: sizes the residency decision

    def __post_init__(self) -> None:
        self.largest = max((b.options for b in self.batches), key=lambda o: o.height * o.width * o.batch_size)

    @property
    def requests(self) -> list[ImageRequest]:
        return [r for batch in self.batches for r in batch.requests]


@dataclass
class Rendered:
    batch: Batch
    latents: torch.Tensor  # (b, 16, h, w) float32 on the CPU: the final latents, before decoding
    images: list[Image.Image]
    seconds: float  # the batch's denoising and decoding time (loads excluded)


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


def render(pipe, work: Work) -> Iterator[Rendered]:
    """Run `work` through `pipe`'s stages; yield each batch, decoded, in order."""
    life = pipe.lifecycle
    with life.call(work.largest):
        need = pipe.memory.activations(work.largest, life.context_tokens)  # bytes, for the memory checks
        conditionings = _encode(pipe, work)  # 1. text -> conditioning (or the caller's)
        starts = _starts(pipe, work, need["vae"])  # 2. the seeds' noise, the caller's latents, or the image noised
        bar = tqdm(total=sum(b.options.steps for b in work.batches), desc="denoising", unit="step",
                   disable=work.quiet, leave=False)

        def on_step(step: int, steps: int, x: torch.Tensor) -> None:
            bar.update()
            if work.on_step is not None:
                work.on_step(step, steps, x)

        decode, finished = _decoder(pipe, work), []
        with bar, life.stage("denoise", need["mmdit"]):
            for batch, cond, (start, blend) in zip(work.batches, conditionings, starts):  # 3. denoise
                begin = time.perf_counter()
                latents = pipe.denoise(cond, start, batch.options, on_step=on_step, blend=blend,
                                       attention_backend=work.attention_backend)
                finished.append((batch, latents, time.perf_counter() - begin))
                if life.keeping:  # 4. decode at once: the models stay loaded anyway
                    yield decode(*finished.pop())
        if finished:  # 4. decode, staged: the MMDiT is freed first and the VAE loads once
            with life.stage("decode", need["vae"]):
                for done in finished:
                    yield decode(*done)


def _encode(pipe, work: Work) -> list[Conditioning]:
    """Each batch's conditioning, one row per image: each text group encoded in one pass."""
    out: list[Conditioning | None] = [None] * len(work.batches)
    with pipe.lifecycle.stage("encode") if work.conditioning is None else contextlib.nullcontext():
        for group in work.text_groups:
            requests = [r for i in group for r in work.batches[i].requests]
            key = (lambda r: r.index) if work.text_per_image else (lambda r: r.text)
            rows = {k: row for row, k in enumerate(dict.fromkeys(map(key, requests)))}  # key -> its row
            encoded = work.conditioning
            if encoded is None:
                firsts = {key(r): r for r in reversed(requests)}  # each key's first request
                texts = [firsts[k] for k in rows]
                encoded = pipe.encode([r.prompt for r in texts], [r.negative_prompt for r in texts])
            for i in group:
                out[i] = encoded.rows([rows[key(r)] for r in work.batches[i].requests])
    return out


def _starts(pipe, work: Work, activation: int) -> list[tuple[torch.Tensor, img2img.Blend | None]]:
    """Each batch's start latents (b, 16, h, w) float32 and, when inpainting, its per-step blend."""
    if work.edit is None:
        return [(_noise(work, batch), None) for batch in work.batches]
    out = []
    with pipe.lifecycle.stage("encode_image", activation):
        for batch in work.batches:
            opts = batch.options
            x0, noise = pipe.encode_image(work.edit.image, batch.seeds, height=opts.height, width=opts.width)
            blend = None
            if work.edit.mask is not None:
                mask = img2img.preprocess_mask(work.edit.mask, opts.height, opts.width)
                blend = img2img.Blend(x0, noise, mask, opts.schedule)
            out.append((img2img.noised(x0, noise, opts.schedule[0]), blend))
    return out


def _noise(work: Work, batch: Batch) -> torch.Tensor:
    opts = batch.options
    if work.latents is None:
        return initial_noise(batch.seeds, 16, opts.height // 8, opts.width // 8)
    rows = [0 if work.latents.shape[0] == 1 else r.index for r in batch.requests]
    return work.latents[rows].float()


def _decoder(pipe, work: Work) -> Callable[[Batch, torch.Tensor, float], Rendered]:
    # diffusers' inpainting decodes without the VAE shift; the reference switch reproduces it
    shift = work.edit is None or work.edit.mask is None or pipe.reference.inpaint_decode_shift

    def decode(batch: Batch, latents: torch.Tensor, seconds: float) -> Rendered:
        begin = time.perf_counter()
        images = pipe.decode(latents, batch_size=batch.options.batch_size, tile_size=batch.options.tile_size,
                             shift=shift)
        return Rendered(batch, latents.cpu(), images, seconds + time.perf_counter() - begin)

    return decode
