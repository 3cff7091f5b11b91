"""Many prompts, streamed: encode a chunk, denoise it in batches, decode, and hand each image back at once.

    for result in pipe.generate_many(["a cat", "a dog", ...], seed=0, batch_size=4):
        result.image.save(f"{result.index:05d}.png")

Memory holds one chunk's conditioning and latents, never the whole list. With resident models a
chunk is one batch, so the first image comes back after one batch's work. In a staged run every
chunk loads and frees each model once, so chunks grow until loading is at most a tenth of the time
(`StreamStats` reports the share).

Reproducibility. Image k's noise comes from its own seed (the run's seed + its global index, or the
seed its prompt line gives). Its batch is fixed by its global index too: batch j holds the indices
j·B .. j·B + B − 1 (B the batch size; split where prompt lines change settings), and text is encoded
one batch at a time. Matrix kernels on CPUs and GPUs are not batch-invariant (a row's result can
depend on how many rows share the call), so fixing the batch is what makes an image the same bytes
whatever the chunk size, the resume point or the number of processes. A different batch size
changes images at the level of float rounding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from PIL import Image
from tqdm.auto import tqdm

from sd3.errors import ConfigurationError
from sd3.sampling.guidance import Conditioning
from sd3.sampling.noise import initial_noise
from sd3.sampling.options import GenerationOptions

MAX_CHUNK = 256  # prompts per chunk at most: bounds the conditioning held between stages
LOAD_SHARE = 0.1  # a staged run grows its chunks until loading is at most this share of the time


@dataclass(frozen=True)
class PromptItem:
    """One image to make: its global index, its prompt, and the settings its line overrides
    (`negative_prompt`, `seed`, `height`, `width`, `steps`, `cfg`, `shift`)."""

    index: int
    prompt: str
    overrides: dict = field(default_factory=dict)


@dataclass
class ImageResult:
    index: int  # the prompt's global index (its line among the prompts)
    image: Image.Image
    prompt: str
    negative_prompt: str
    seed: int
    settings: dict  # height, width, steps, cfg, shift, sampler, slg of this image
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
    prompts: Iterable[str | PromptItem],
    *,
    negative_prompt: str = "",
    seed: int = 0,
    batch_size: int = 1,
    chunk_size: int | None = None,
    stats: StreamStats | None = None,
    quiet: bool = False,
    **settings,
) -> Iterator[ImageResult]:
    """Yield one `ImageResult` per prompt as soon as it is decoded (in order within a chunk).

    Args:
        pipe: a `StableDiffusion3`.
        prompts: strings (indexed by position) or `PromptItem`s (their own index and overrides).
        negative_prompt, seed: for every prompt whose item does not set its own.
        batch_size: images denoised and decoded together (and, with their negative prompts, encoded).
        chunk_size: prompts encoded together; None chooses (one batch when the models stay
            resident, growing chunks when staged).
        settings: `height`, `width`, `steps`, `cfg`, `shift`, `slg`, `sampler_name`, `tile_size`
            as for `generate()`; a prompt line's overrides win.
    """
    items = [p if isinstance(p, PromptItem) else PromptItem(i, p) for i, p in enumerate(prompts)]
    if not items:
        raise ConfigurationError("`prompts` holds no prompt")
    if chunk_size is not None and chunk_size < 1:
        raise ConfigurationError(f"`chunk_size` must be at least 1, got {chunk_size}")
    options = {}  # every distinct setting is checked before anything loads
    for item in items:
        key = settings_key(item)
        if key not in options:
            options[key] = item_options(pipe, item, settings, seed=seed, batch_size=batch_size)
    stats = stats if stats is not None else StreamStats()
    batches = _batches(items, options, batch_size)
    bar = tqdm(total=len(items), desc="images", unit="image", disable=quiet)
    with bar:
        while batches:
            staged = pipe.plan(max(options.values(), key=lambda o: o.height * o.width * o.batch_size))
            size = chunk_size or _next_chunk_size(stats, staged, batch_size)
            chunk = [batches.pop(0)]
            while batches and sum(len(b[0]) for b in chunk) + len(batches[0][0]) <= size:
                chunk.append(batches.pop(0))
            stats.chunks += 1
            stats.chunk_sizes.append(sum(len(b[0]) for b in chunk))
            for result in _chunk(pipe, chunk, negative_prompt, seed, staged, stats):
                bar.update()
                yield result


def item_options(pipe, item: PromptItem, settings: dict, *, seed: int, batch_size: int) -> GenerationOptions:
    """The checked options of one item: `settings` (as for `generate()`) with the item's overrides."""
    base = {"height": 1024, "width": 1024, "steps": None, "cfg": None, "shift": None, "slg": None,
            "sampler_name": "euler", "tile_size": None, **settings}
    chosen = {**base, **{k: v for k, v in item.overrides.items() if k in base}}
    return pipe.options(seed=seed, num_images=1, batch_size=batch_size, sigmas=None, **chosen)


def describe(opts: GenerationOptions) -> dict:
    """The settings that make an image what it is, as JSON values (a manifest line's `settings`)."""
    slg = None if opts.slg is None else {**dataclasses.asdict(opts.slg), "layers": list(opts.slg.layers)}
    return {"height": opts.height, "width": opts.width, "steps": opts.steps, "cfg": opts.cfg, "shift": opts.shift,
            "sampler": opts.sampler, "slg": slg}


def settings_key(item: PromptItem) -> tuple:
    """What makes two items' settings the same (their overrides, less seed and negative prompt)."""
    return tuple(sorted((k, v) for k, v in item.overrides.items() if k not in ("seed", "negative_prompt")))


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


def _batches(items: list[PromptItem], options: dict, batch_size: int) -> list[tuple[list[PromptItem], GenerationOptions]]:
    """Items grouped into batches by global index (index // batch_size), split where settings change."""
    batches = []
    for item in items:
        opts = options[settings_key(item)]
        last = batches[-1] if batches else None
        if last and last[1] is opts and last[0][-1].index // batch_size == item.index // batch_size:
            last[0].append(item)
        else:
            batches.append(([item], opts))
    return batches


def _chunk(pipe, chunk, negative_prompt, seed, staged, stats) -> Iterator[ImageResult]:
    timings = {"load": 0.0, "encode": 0.0, "denoise": 0.0, "decode": 0.0}
    conditioned = []
    for members, opts in chunk:  # one text-encoder pass per batch: its prompts, then its negatives
        negatives = [item.overrides.get("negative_prompt", negative_prompt) for item in members]
        context, y = pipe._encode([item.prompt for item in members] + negatives, False, timings)
        n = len(members)
        conditioned.append((members, opts, negatives, Conditioning(context[:n], y[:n], context[n:], y[n:])))
    if staged:
        pipe.models.release("clip_l", "clip_g", "t5")
    finished = []  # staged: every batch is denoised before the VAE loads
    for members, opts, negatives, cond in conditioned:
        seeds = [item.overrides.get("seed", seed + item.index) for item in members]
        noise = initial_noise(seeds, 16, opts.height // 8, opts.width // 8)
        before = timings["denoise"]
        latents = pipe._denoise(cond, noise, opts, False, timings)
        finished.append((members, opts, negatives, seeds, latents, timings["denoise"] - before))
        if not staged:
            yield from _decoded(pipe, finished.pop(), timings, stats)
    if staged:
        pipe.models.release("mmdit")
        for batch in finished:
            yield from _decoded(pipe, batch, timings, stats)
        pipe.models.release("vae")
    stats.load_seconds += timings["load"]
    stats.compute_seconds += timings["encode"]


def _decoded(pipe, batch, timings, stats) -> Iterator[ImageResult]:
    members, opts, negatives, seeds, latents, denoise_seconds = batch
    before = timings["decode"]
    images = pipe._decode(latents, opts, False, timings)
    seconds = (denoise_seconds + timings["decode"] - before) / len(members)
    stats.compute_seconds += seconds * len(members)
    settings = describe(opts)
    for item, image, negative, image_seed in zip(members, images, negatives, seeds):
        stats.images += 1
        yield ImageResult(index=item.index, image=image, prompt=item.prompt, negative_prompt=negative,
                          seed=image_seed, settings=settings, seconds=seconds)
