"""The models' lifecycle, in one place: check the memory, load, time the work, keep or free.

Every stage of the pipeline runs inside `lifecycle.stage(name)`:

    with pipe.lifecycle.stage("denoise", activation=bytes_needed) as models:
        ...models["mmdit"](x, t, y, context)...

On entry it refuses, with advice, a stage whose models and activations do not fit the device
(sampling/memory.py), then loads the stage's models that are not resident (their time goes to
`timings.load`). The work inside is timed under the stage's clock. On exit the `keep` policy
(sampling/residency.py) decides: a call that keeps its models leaves them loaded, a staged call
frees the stage's models before the next stage loads.

A call (`generate()`, one chunk of `generate_many()`) opens `lifecycle.call(options)`, which makes
that decision once, for the largest work of the call, and collects the call's `timings`. A stage
used on its own (`pipe.encode(...)` in a notebook) is a call by itself. Stages nest: a stage that is
already open hands back its models and neither loads, checks nor times again, so a caller can hold
the text encoders across many `pipe.encode` calls with one `with lifecycle.stage("encode")`.

A new model that runs at every step (a ControlNet, a preview decoder) is one more entry in
`STAGES`' model lists and one more loader: the stage that uses it then checks, loads, times and
frees it with the rest.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass

from torch import nn

from sd3.sampling.memory import StageMemory
from sd3.sampling.residency import ResidentModels

TEXT_ENCODERS = ("clip_l", "clip_g", "t5")


@dataclass(frozen=True)
class Stage:
    models: tuple[str, ...]  # what it runs (a model the pipeline has no file for is left out)
    label: str  # its name in messages: "the denoising stage needs about ..."
    advice: str  # how to make it fit, in the library's parameters
    clock: str  # the `Timings` field its time adds to


STAGES = {
    "encode": Stage(TEXT_ENCODERS, "text encoding",
                    'use `dtype="bfloat16"` or `files["t5xxl"]=None` (saves ~10 GB), or `device="cpu"`', "encode"),
    "encode_image": Stage(("vae",), "image encoding", "use a smaller `height`/`width`", "encode"),
    "denoise": Stage(("mmdit",), "denoising",
                     'use `dtype="bfloat16"`, a smaller `height`/`width` or `batch_size=1`', "denoise"),
    "decode": Stage(("vae",), "decoding", 'use `batch_size=1`, `dtype="bfloat16"` or a smaller `height`/`width`',
                    "decode"),
}


@dataclass
class Timings:
    """Seconds spent in one call: loading models, and inside each stage (loads excluded).
    `encode` covers the text encoders and, for image to image, the VAE's encoding of the image."""

    load: float = 0.0
    encode: float = 0.0
    denoise: float = 0.0
    decode: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class ModelLifecycle:
    """Loads, keeps and frees one pipeline's models around its stages.

    Args:
        models: the store of loaded models (shared with the pipeline).
        memory: the pipeline's memory arithmetic.
        keep: "auto", "all" or "stage" (sampling/residency.py).
        loaders: model name -> a function that loads it (no entry: the pipeline runs without it,
            as without T5).
        prepare: model name -> a function applied once after loading (e.g. `torch.compile`).
        context_tokens: text tokens of the conditioning (77 + the T5 length), for activations.
    """

    def __init__(
        self,
        models: ResidentModels,
        memory: StageMemory,
        keep: str,
        loaders: Mapping[str, Callable[[], nn.Module]],
        prepare: Mapping[str, Callable[[nn.Module], nn.Module]],
        context_tokens: int,
    ) -> None:
        self.models, self.memory, self.keep = models, memory, keep
        self.loaders, self.prepare, self.context_tokens = loaders, prepare, context_tokens
        self.timings = Timings()  # the current call's, or the last one's
        self.keeping: bool | None = None  # inside a call: whether models stay loaded after their stage
        self._open: dict[str, tuple[dict, list]] = {}  # stages now open -> (their models, inner stages run)

    def keeps_models(self, options=None) -> bool:
        """Whether a call of `options` (a GenerationOptions; None: sizes unknown) leaves each model
        loaded after its stage: `keep`, or for "auto" the memory check. Frees nothing."""
        return self.memory.fits_together(self.keep, self.models, options, self.context_tokens)

    @contextlib.contextmanager
    def call(self, options=None) -> Iterator[Timings]:
        """One call's work: decides for it, at `options`' size, whether models stay loaded between
        stages, frees what earlier calls left loaded when they do not, and collects its timings.
        Inside an open call it changes nothing."""
        if self.keeping is not None:
            yield self.timings
            return
        self.keeping = self.keeps_models(options)
        if not self.keeping:
            self.models.release()
        self.timings = Timings()
        try:
            yield self.timings
        finally:
            self.keeping = None

    @contextlib.contextmanager
    def stage(self, name: str, activation: int = 0) -> Iterator[dict[str, nn.Module]]:
        """Run stage `name` (a key of `STAGES`): yields its models by name, loaded.

        Inside an open stage of the same name it only times its work: the outer one has checked,
        loaded, and will keep or free. An outer stage's own time counts only when no inner one ran,
        so a caller holding a stage across a loop that yields is not charged for what it does
        between yields.

        Args:
            activation: bytes its activations need on the device, for the memory check.

        Raises:
            DeviceError: the stage's models not yet loaded and `activation` exceed the free memory.
        """
        stage = STAGES[name]
        if name in self._open:
            models, inner = self._open[name]
            with self._clock(stage.clock):
                yield models
            inner.append(True)
            return
        names = [model for model in stage.models if model in self.loaders]
        with self.call():
            self.memory.check(stage.label, names, self.models, activation, stage.advice)
            models, inner = {model: self._load(model) for model in names}, []
            self._open[name] = (models, inner)
            start = time.perf_counter()
            try:
                yield models
            finally:
                del self._open[name]
                if not inner:
                    self._add(stage.clock, time.perf_counter() - start)
                if not self.keeping:
                    models.clear()  # the caller's handle lets go too, so the release below frees them
                    self.models.release(*names)

    @contextlib.contextmanager
    def _clock(self, clock: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._add(clock, time.perf_counter() - start)

    def _add(self, clock: str, seconds: float) -> None:
        setattr(self.timings, clock, getattr(self.timings, clock) + seconds)

    def _load(self, name: str) -> nn.Module:
        if name in self.models:
            return self.models.get(name, self.loaders[name])
        with self._clock("load"):
            return self.models.get(name, self.loaders[name], self.prepare.get(name))
