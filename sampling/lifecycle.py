"""The models' lifecycle, in one place: check the memory, load, time the work, keep or free.

Every stage of the pipeline runs inside `lifecycle.stage(name)`:

    with pipe.lifecycle.stage("denoise", activation=bytes_needed) as models:
        ...models["mmdit"](x, t, y, context)...

On entry it refuses, with advice, a stage whose models and activations do not fit the device
(sampling/memory.py), after freeing any other model that stands in the way, then loads the stage's
models that are not resident (their time goes to `timings.load`). The work inside is timed under the
stage's clock. On exit the `keep` policy (sampling/residency.py) decides: a call that keeps its
models leaves them loaded, a staged call frees the stage's models before the next stage loads.

A call (`generate()`, one chunk of `generate_many()`) is a `Call`: `lifecycle.start(options)` makes
the keep-or-free decision once, for the largest work of the call, and the `Call` collects its
`timings`; `with lifecycle.using(call):` runs code as part of it. A stage used on its own
(`pipe.encode(...)` in a notebook) is a call by itself.

`lifecycle.hold(name)` is a stage that does not time itself: it loads (and checks, and frees on
exit) once for many stages of the same name inside it, so a caller can hold the text encoders across
many `pipe.encode` calls, which time themselves. A `with` block never stays open across a `yield`:
what must stay loaded between a generator's yields is pinned to its call (`call.pinned`) and freed
by `lifecycle.finish(call)`.

A new model that runs at every step (a ControlNet, a preview decoder) is one more entry in `STAGES`'
model lists, one more loader, and its file in `StageMemory`: the stage that uses it then checks,
loads, times and frees it with the rest.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from torch import nn

from sd3.errors import DeviceError
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
    # Step previews (sampling/previews.py): the decoder they lend sits beside the MMDiT while it denoises.
    "preview_taesd": Stage(("taesd",), "preview decoding", "use the `proj` preview", "denoise"),
    "preview_vae": Stage(("vae",), "preview decoding", "use the `taesd` or `proj` preview", "denoise"),
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


@dataclass
class Call:
    """One call's decision and record: whether its models stay loaded after their stage, its
    timings, its open holds (stage name -> models) and the models pinned until it finishes."""

    keeping: bool
    timings: Timings = field(default_factory=Timings)
    holds: dict[str, dict[str, nn.Module]] = field(default_factory=dict)
    pinned: set[str] = field(default_factory=set)


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
        stages: stage name -> `Stage` (default `STAGES`; a pipeline decoding with TAESD3 changes "decode").
    """

    def __init__(
        self,
        models: ResidentModels,
        memory: StageMemory,
        keep: str,
        loaders: Mapping[str, Callable[[], nn.Module]],
        prepare: Mapping[str, Callable[[nn.Module], nn.Module]],
        context_tokens: int,
        stages: Mapping[str, Stage] = STAGES,
    ) -> None:
        self.models, self.memory, self.keep, self.stages = models, memory, keep, stages
        self.loaders, self.prepare, self.context_tokens = loaders, prepare, context_tokens
        self.current: Call | None = None  # the call the code now running belongs to
        self.timings = Timings()  # the last call's

    def keeps_models(self, options=None, extra: Sequence[str] = ()) -> bool:
        """Whether a call of `options` (a GenerationOptions; None: sizes unknown) leaves each model
        loaded after its stage: `keep`, or for "auto" the memory check, counting the `extra` models
        it also runs (its ControlNets). Frees nothing."""
        return self.memory.fits_together(self.keep, self.models, options, self.context_tokens, extra)

    def start(self, options=None, extra: Sequence[str] = ()) -> Call:
        """A new call for work of `options`' size (and `extra` models, as `keeps_models`): decides
        whether its models stay loaded between stages, and frees what earlier calls left loaded when they do not."""
        call = Call(self.keeps_models(options, extra))
        if not call.keeping:
            self.models.release()
        self.timings = call.timings
        return call

    @contextlib.contextmanager
    def using(self, call: Call) -> Iterator[Call]:
        """Run the block as part of `call` (its decision, its timings, its holds)."""
        outer, self.current = self.current, call
        try:
            yield call
        finally:
            self.current = outer

    def finish(self, call: Call) -> None:
        """Free what `call` pinned, unless it keeps its models."""
        if not call.keeping and call.pinned:
            self.models.release(*call.pinned)
        call.pinned.clear()

    @contextlib.contextmanager
    def hold(self, name: str, activation: int = 0) -> Iterator[dict[str, nn.Module]]:
        """Stage `name`'s models (a key of `STAGES`), loaded, for the block; not timed.

        Inside a hold of the same name it only hands over the models. Outside any call it is a
        call by itself.

        Args:
            activation: bytes its activations need on the device, for the memory check.

        Raises:
            DeviceError: the stage's models not yet loaded and `activation` exceed the free memory,
                even once every other model is freed.
        """
        if self.current is None:
            call = self.start()
            with self.using(call), self.hold(name, activation) as models:
                yield models
            return
        call = self.current
        if name in call.holds:
            yield call.holds[name]
            return
        stage = self.stages[name]
        names = [model for model in stage.models if model in self.loaders]
        self._make_room(stage, names, activation)
        models: dict[str, nn.Module] = {}
        try:
            for model in names:
                models[model] = self._load(model, call.timings)
            call.holds[name] = models
            yield models
        finally:
            call.holds.pop(name, None)
            freed = [n for n in names if n not in call.pinned]
            if not call.keeping and freed:
                models.clear()  # the caller's handle lets go too, so the release below frees them
                self.models.release(*freed)

    @contextlib.contextmanager
    def stage(self, name: str, activation: int = 0) -> Iterator[dict[str, nn.Module]]:
        """Stage `name`: `hold` its models, and time the block (loads excluded) on its clock."""
        with self.hold(name, activation) as models:
            call, start = self.current, time.perf_counter()
            try:
                yield models
            finally:
                clock = self.stages[name].clock
                setattr(call.timings, clock, getattr(call.timings, clock) + time.perf_counter() - start)

    def _make_room(self, stage: Stage, names: list[str], activation: int) -> None:
        """The memory check; when it fails, free the models no open hold uses, and check again."""
        try:
            self.memory.check(stage.label, names, self.models, activation, stage.advice)
        except DeviceError:
            busy = set(names) | {m for held in self.current.holds.values() for m in held}
            idle = [m for m in self.models.models if m not in busy]
            if not idle:
                raise
            self.models.release(*idle)
            self.memory.check(stage.label, names, self.models, activation, stage.advice)

    def _load(self, name: str, timings: Timings) -> nn.Module:
        if name in self.models:
            return self.models.get(name, self.loaders[name])
        start = time.perf_counter()
        module = self.models.get(name, self.loaders[name], self.prepare.get(name))
        timings.load += time.perf_counter() - start
        return module
