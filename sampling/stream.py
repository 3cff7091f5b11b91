"""Many prompts, streamed: the list cut into chunks, each run through the stages, each image handed back at once.

    for result in pipe.generate_many(["a cat", "a dog", ...], seed=0, batch_size=4):
        result.image.save(f"{result.index:05d}.png")

Memory holds one chunk's conditioning and latents, never the whole list. With resident models a
chunk is one batch, so the first image comes back after one batch's work. In a staged run every
chunk loads and frees each model once, so chunks grow until loading is at most a tenth of the time
(`StreamStats` reports the share).

Each chunk runs through sampling/run.py, the same stages as `generate()`. Image k's noise comes from
its own seed (sampling/requests.py), its batch is fixed by its global index, and its text is encoded
with its batch alone, so its bytes are the same whatever the chunk size, the resume point or the
number of processes. A different batch size changes images at the level of float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from PIL import Image
from tqdm.auto import tqdm

from sd3.errors import ConfigurationError
from sd3.sampling import checks, img2img, run
from sd3.sampling.options import GenerationOptions
from sd3.sampling.requests import ImageRequest, PromptItem, image_requests, settings_key

MAX_CHUNK = 256  # prompts per chunk at most: bounds the conditioning held between stages
LOAD_SHARE = 0.1  # a staged run grows its chunks until loading is at most this share of the time


@dataclass
class ImageResult:
    index: int  # the image's global index
    image: Image.Image
    prompt: str
    negative_prompt: str
    seed: int
    settings: dict  # height, width, steps, cfg, shift, sampler, slg of this image (`describe`)
    seconds: float  # this image's share of its batch's denoising and decoding time (loads excluded)


@dataclass
class StreamStats:
    """Where a stream's time went: filled in as it runs."""

    images: int = 0
    chunks: int = 0
    load_seconds: float = 0.0
    compute_seconds: float = 0.0
    chunk_sizes: list[int] = field(default_factory=list)

    @property
    def load_share(self) -> float:
        total = self.load_seconds + self.compute_seconds
        return self.load_seconds / total if total else 0.0


def generate_many(
    pipe,
    prompts: Iterable[str | PromptItem | ImageRequest],
    *,
    negative_prompt: str = "",
    seed: int = 0,
    batch_size: int = 1,
    chunk_size: int | None = None,
    stats: StreamStats | None = None,
    quiet: bool = False,
    init_image: img2img.ImageLike | None = None,
    strength: float | None = None,
    mask: img2img.ImageLike | None = None,
    **settings,
) -> Iterator[ImageResult]:
    """Yield one `ImageResult` per image as soon as it is decoded (in index order within a chunk).

    Args:
        pipe: a `StableDiffusion3`.
        prompts: strings (indexed by position), `PromptItem`s (their own index and overrides), or
            `ImageRequest`s from `image_requests` (then `negative_prompt` and `seed` are theirs).
        negative_prompt, seed: for every prompt whose item does not set its own.
        batch_size: images denoised and decoded together (and, with their negative prompts, encoded).
        chunk_size: prompts encoded together; None chooses (one batch when the models stay
            resident, growing chunks when staged).
        init_image, strength, mask: image to image and inpainting for every prompt, as for `generate()`.
        settings: `height`, `width`, `steps`, `cfg`, `shift`, `slg`, `sampler_name`, `tile_size`
            as for `generate()`; a prompt line's own settings win.

    Raises:
        ConfigurationError: any prompt line or setting that cannot run, before any model loads.
    """
    items = list(prompts)
    requests = items if items and all(isinstance(p, ImageRequest) for p in items) else image_requests(
        items, negative_prompt, seed=seed)
    if chunk_size is not None and chunk_size < 1:
        raise ConfigurationError(f"`chunk_size` must be at least 1, got {chunk_size}")
    edit = checks.edit(init_image, strength, mask)
    options = {}  # every distinct setting is checked before anything loads
    for request in requests:
        if settings_key(request) not in options:
            options[settings_key(request)] = request_options(pipe, request, settings, batch_size=batch_size,
                                                             strength=edit and edit.strength)
    stats = stats if stats is not None else StreamStats()
    batches = run.batches(requests, lambda request: options[settings_key(request)], batch_size)
    largest = max(options.values(), key=lambda o: o.height * o.width * o.batch_size)
    with tqdm(total=len(requests), desc="images", unit="image", disable=quiet) as bar:
        while batches:
            staged = not pipe.lifecycle.keeps_models(largest)
            size = chunk_size or _next_chunk_size(stats, staged, batch_size)
            chunk = [batches.pop(0)]
            while batches and sum(len(b.requests) for b in chunk) + len(batches[0].requests) <= size:
                chunk.append(batches.pop(0))
            stats.chunks += 1
            stats.chunk_sizes.append(sum(len(b.requests) for b in chunk))
            work = run.Work(chunk, [[i] for i in range(len(chunk))], text_per_image=True, edit=edit)  # batch by batch
            for rendered in run.render(pipe, work):
                seconds = rendered.seconds / len(rendered.batch.requests)
                stats.compute_seconds += rendered.seconds
                for request, picture in zip(rendered.batch.requests, rendered.images):
                    stats.images += 1
                    bar.update()
                    yield ImageResult(index=request.index, image=picture, prompt=request.prompt,
                                      negative_prompt=request.negative_prompt, seed=request.seed,
                                      settings=describe(rendered.batch.options), seconds=seconds)
            stats.load_seconds += pipe.lifecycle.timings.load
            stats.compute_seconds += pipe.lifecycle.timings.encode


def request_options(pipe, request: ImageRequest, settings: dict, *, batch_size: int,
                    strength: float | None = None) -> GenerationOptions:
    """The checked options of one request: `settings` (as for `generate()`) with its own settings."""
    return pipe.options(**{**settings, **request.settings}, batch_size=batch_size, strength=strength)


def describe(opts: GenerationOptions) -> dict:
    """The settings that make an image what it is, as JSON values (a manifest line's `settings`)."""
    slg = None if opts.slg is None else {"scale": opts.slg.scale, "start": opts.slg.start, "end": opts.slg.end,
                                         "layers": list(opts.slg.layers)}
    return {"height": opts.height, "width": opts.width, "steps": opts.steps, "cfg": opts.cfg, "shift": opts.shift,
            "sampler": opts.sampler, "slg": slg}


def _next_chunk_size(stats: StreamStats, staged: bool, batch_size: int) -> int:
    """Resident: one batch. Staged: enough images that one chunk's loads stay a tenth of its time."""
    if not staged:
        return batch_size
    if not stats.images or not stats.load_seconds:
        return max(batch_size, 4)
    per_load = stats.load_seconds / stats.chunks
    per_image = stats.compute_seconds / stats.images
    wanted = math.ceil(per_load * (1 - LOAD_SHARE) / (LOAD_SHARE * per_image))
    return min(MAX_CHUNK, max(batch_size, batch_size * math.ceil(wanted / batch_size)))
