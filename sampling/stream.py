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
from dataclasses import dataclass, field, replace

from PIL import Image
from tqdm.auto import tqdm

from sd3.errors import ConfigurationError
from sd3.sampling import checks, img2img, run
from sd3.sampling.requests import ImageRequest, PromptItem, image_requests
from sd3.sampling.samplers import StepCallback

MAX_CHUNK = 256  # prompts per chunk at most: bounds the conditioning held between stages
LOAD_SHARE = 0.1  # a staged run grows its chunks until loading is at most this share of the time


@dataclass
class ImageResult:
    index: int  # the image's global index
    image: Image.Image
    prompt: str
    negative_prompt: str
    seed: int
    settings: dict  # height, width, steps, cfg, shift, sampler, slg of this image (`GenerationOptions.describe`)
    seconds: float  # this image's share of its batch's denoising and decoding time (loads excluded)
    stream: tuple[int, int] = (0, 0)  # (seed, row) of its noise under ComfyUI's batch rule (`ImageRequest.stream`)


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
    num_images: int = 1,
    batch_size: int = 1,
    chunk_size: int | None = None,
    stats: StreamStats | None = None,
    quiet: bool = False,
    init_image: img2img.ImageLike | None = None,
    strength: float | None = None,
    mask: img2img.ImageLike | None = None,
    on_step: StepCallback | None = None,
    control=None,
    **settings,
) -> Iterator[ImageResult]:
    """Yield one `ImageResult` per image as soon as it is decoded (in index order within a chunk).

    Args:
        pipe: a `StableDiffusion3`.
        prompts: strings (indexed by position), `PromptItem`s (their own index and settings), or
            `ImageRequest`s from `image_requests`, which carry their own negative prompt and seed.
        negative_prompt, seed, num_images: for the prompts that are not `ImageRequest`s already;
            a line's own negative prompt and seed win.
        batch_size: images denoised and decoded together (and their texts encoded together).
        chunk_size: images per chunk, whose models load once when staged; None chooses (one batch
            when the models stay resident, growing chunks when staged).
        init_image, strength, mask: image to image and inpainting for every prompt, as for `generate()`.
        control: ControlNets with their control images for every prompt, as for `generate()`.
        on_step: called after every denoising step of every batch, as for `generate()`; a `Step`'s
            `indices` say which images (a `Preview` keeps one set of frames per image).
        settings: `height`, `width`, `steps`, `cfg`, `shift`, `slg`, `sampler_name`, `tile_size`
            as for `generate()`; a prompt line's own settings win.

    Raises:
        ConfigurationError: any prompt line or setting that cannot run, before any model loads.
    """
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    requests = items if items and all(isinstance(p, ImageRequest) for p in items) else image_requests(
        items, negative_prompt, seed=seed, num_images=num_images)
    if chunk_size is not None and chunk_size < 1:
        raise ConfigurationError(f"`chunk_size` must be at least 1, got {chunk_size}")
    settings = {**settings, "batch_size": batch_size}
    controls = checks.controls(pipe, control, settings)  # may set Stability's ControlNet defaults
    work = checks.work(pipe, requests, settings, edit=checks.edit(init_image, strength, mask), encode_per_batch=True,
                       control=controls)
    checks.check_callback(on_step, pipe.files.taesd)
    stats = stats if stats is not None else StreamStats()
    batches = list(work.batches)
    with tqdm(total=len(requests), desc="images", unit="image", disable=quiet) as bar:
        while batches:
            keeping = pipe.lifecycle.keeps_models(work.largest, [c.name for c in work.controls])
            size = chunk_size or _next_chunk_size(stats, keeping, batch_size)
            chunk = [batches.pop(0)]
            while batches and sum(len(b.requests) for b in chunk) + len(batches[0].requests) <= size:
                chunk.append(batches.pop(0))
            stats.chunks += 1
            stats.chunk_sizes.append(sum(len(b.requests) for b in chunk))
            for rendered in run.render(pipe, replace(work, batches=chunk), on_step=on_step):
                seconds = rendered.seconds / len(rendered.batch.requests)
                stats.compute_seconds += rendered.seconds
                for request, picture in zip(rendered.batch.requests, rendered.images):
                    stats.images += 1
                    bar.update()
                    yield ImageResult(index=request.index, image=picture, prompt=request.prompt,
                                      negative_prompt=request.negative_prompt, seed=request.seed,
                                      settings=rendered.batch.options.describe(), seconds=seconds,
                                      stream=request.stream)
            stats.load_seconds += pipe.lifecycle.timings.load
            stats.compute_seconds += pipe.lifecycle.timings.encode


def _next_chunk_size(stats: StreamStats, keeping: bool, batch_size: int) -> int:
    """Resident: one batch. Staged: enough images that one chunk's loads stay a tenth of its time."""
    if keeping:
        return batch_size
    if not stats.images or not stats.load_seconds:
        return max(batch_size, 4)
    per_load = stats.load_seconds / stats.chunks
    per_image = stats.compute_seconds / stats.images
    wanted = math.ceil(per_load * (1 - LOAD_SHARE) / (LOAD_SHARE * per_image))
    return min(MAX_CHUNK, max(batch_size, batch_size * math.ceil(wanted / batch_size)))
