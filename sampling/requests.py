"""One request per image: what it shows, its seed, its own settings, and its place in the run.

Every caller (`generate`, `generate_many`, the jobs, the command line) turns its prompts into
`ImageRequest`s with `image_requests`, the one function that knows the seed rule:

    image j of prompt i has the global index i·N + j (N images per prompt) and the seed
    `seed` + index, or, when its prompt line gives a seed, that seed + j. Under ComfyUI's batch
    noise it is row `index` of the stream seeded with `seed` (row j of its line's seed's).

The global index names the image (`00007.png`), fixes its batch (index // batch size, see
sampling/run.py) and so its bytes, and sets its seed: any image can be made again alone, in any
chunk, resumed run or process, from its index.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sd3.errors import ConfigurationError

# What a prompt line may set for its own images, besides its seed and negative prompt (prompt files
# offer the first five: sd3/jobs/prompts.py).
PER_IMAGE_SETTINGS = ("height", "width", "steps", "cfg", "shift", "slg", "sampler_name", "tile_size")


@dataclass(frozen=True)
class PromptItem:
    """One prompt line: its index among the lines, its prompt, and what it overrides
    (`negative_prompt`, `seed`, and any of `PER_IMAGE_SETTINGS`)."""

    index: int
    prompt: str
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ImageRequest:
    """One image to make.

    Attributes:
        index: the global index: it names the image, fixes its batch and, by default, its seed.
        prompt, negative_prompt: the conditional and unconditional text.
        seed: the seed of its initial noise (sampling/noise.py).
        settings: what its prompt line sets for it alone (a subset of `PER_IMAGE_SETTINGS`);
            empty when the run's settings apply.
        prompt_index: which prompt (line) it renders: the images of one prompt share its text
            encoding within a batch.
        stream: (seed, row) of its noise under ComfyUI's batch rule (sampling/noise.py): the run's
            seed and its global index, or its line's seed and its place among the line's images
            (default: row 0 of its own seed's).
    """

    index: int
    prompt: str
    negative_prompt: str
    seed: int
    settings: Mapping[str, object] = field(default_factory=dict, hash=False)
    prompt_index: int = 0
    stream: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.stream is None:  # a request made by hand: row 0 of its own seed's stream
            object.__setattr__(self, "stream", (self.seed, 0))

    @property
    def text(self) -> tuple[int, str, str]:
        """What its conditioning depends on: two requests with the same text share one encoding."""
        return self.prompt_index, self.prompt, self.negative_prompt


def image_requests(
    prompts: str | Iterable[str | PromptItem],
    negative_prompts: str | Sequence[str] | None = None,
    *,
    seed: int,
    num_images: int = 1,
) -> list[ImageRequest]:
    """The images `prompts` ask for, `num_images` per prompt, in global-index order.

    Args:
        prompts: a prompt, or prompts (strings, indexed by position) and `PromptItem`s (their
            own index, negative prompt, seed and settings).
        negative_prompts: one for every prompt (None: ""), or one per prompt.
        seed: the run's seed.
        num_images: images per prompt.

    Raises:
        ConfigurationError: no prompt, a prompt that is not a string, a count of negative prompts
            that is not one per prompt, `num_images` below 1, or two prompts with the same index.
    """
    lines = [PromptItem(0, prompts)] if isinstance(prompts, str) else [
        p if isinstance(p, PromptItem) else PromptItem(i, p) for i, p in enumerate(prompts)]
    _, negatives = prompt_lists([line.prompt for line in lines], negative_prompts)
    if num_images < 1:
        raise ConfigurationError(f"`num_images` must be at least 1, got {num_images}")
    if len({line.index for line in lines}) != len(lines):
        raise ConfigurationError("two `prompts` share one index: each prompt line needs its own")
    for line in lines:
        unknown = sorted(set(line.overrides) - {*PER_IMAGE_SETTINGS, "seed", "negative_prompt"})
        if unknown:
            raise ConfigurationError(f"prompt {line.index} sets {unknown}; a prompt line may set seed, "
                                     f"negative_prompt, {', '.join(PER_IMAGE_SETTINGS)}")
    requests = []
    for line, negative in zip(lines, negatives):
        settings = {k: v for k, v in line.overrides.items() if k in PER_IMAGE_SETTINGS}
        for j in range(num_images):
            index = line.index * num_images + j
            own_seed = line.overrides.get("seed")
            requests.append(ImageRequest(
                index=index, prompt=line.prompt, negative_prompt=line.overrides.get("negative_prompt", negative),
                seed=seed + index if own_seed is None else own_seed + j, settings=settings, prompt_index=line.index,
                stream=(seed, index) if own_seed is None else (own_seed, j),
            ))
    return requests


def prompt_lists(prompts: str | Sequence[str], negative_prompts: str | Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(prompts, one negative prompt per prompt) from a string or a list of strings each."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ConfigurationError("`prompts` must be a string or a non-empty list of strings")
    if negative_prompts is None or isinstance(negative_prompts, str):
        return prompts, [negative_prompts or ""] * len(prompts)
    negatives = list(negative_prompts)
    if len(negatives) != len(prompts) or not all(isinstance(p, str) for p in negatives):
        raise ConfigurationError(f"{len(prompts)} `prompts` but {len(negatives)} `negative_prompts`")
    return prompts, negatives


def settings_key(request: ImageRequest) -> tuple:
    """What makes two requests' settings the same (their own settings; seeds and texts aside)."""
    return tuple(sorted(request.settings.items()))
