"""Text to image in three stages, as Candle's main.rs: encode the prompts, denoise, decode.

    import sd3
    pipe = sd3.StableDiffusion3.from_variant("3.5-medium")          # files from the Hub cache
    result = pipe.generate(["a photo of a cat"], seed=0)             # the variant's steps and cfg
    result.images[0].save("cat.png")

Models are loaded on first use and kept or freed between stages and calls by the `keep` policy
(sampling/residency.py): a notebook loop loads each model once, and a small machine still runs
one stage at a time. Before each load, the memory check refuses, with advice, a stage that cannot fit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from sd3 import clip, mmdit
from sd3 import vae as vae_lib
from sd3.checkpoint import open_checkpoint
from sd3.devices import default_dtype, describe, resolve_device, resolve_dtype
from sd3.errors import ConfigurationError, SamplingError
from sd3.lora import LoRA, load_lora
from sd3.sampling import img2img, memory
from sd3.sampling.guidance import Conditioning, GuidedVelocity, SkipLayerGuidanceConfig
from sd3.sampling.hub import ModelFiles, model_files
from sd3.sampling.img2img import ImageLike
from sd3.sampling.noise import start_latents
from sd3.sampling.options import GenerationOptions, prompt_lists
from sd3.sampling.reference import Reference
from sd3.sampling.residency import ResidentModels, check_keep
from sd3.sampling.samplers import StepCallback, sampler
from sd3.sampling.stream import generate_many
from sd3.sampling.variants import Variant, variant as variant_named

logger = logging.getLogger(__name__)
TEXT_ENCODERS = ("clip_l", "clip_g", "t5")


@dataclass
class GenerationResult:
    images: list[Image.Image]
    latents: torch.Tensor  # final model-space latents (n, 16, h, w), float32, before decoding
    seeds: list[int]
    prompts: list[str]
    negative_prompts: list[str]
    steps: int  # denoising steps per image (the schedule's length minus one)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: load, encode, denoise, decode


class StableDiffusion3:
    """The whole pipeline over local files, keeping its models loaded as `keep` says."""

    def __init__(
        self,
        files: ModelFiles,
        *,
        variant: str | Variant | None = None,
        reference: str | Reference | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        keep: str = "auto",
        on_load: Callable[[str, nn.Module], None] | None = None,
        compile: bool = False,
    ) -> None:
        """Most callers want `from_variant`; this builds a pipeline from files already on disk.

        Args:
            variant: whose defaults `generate()` uses (steps, cfg, shift, SLG). None: `generate()`
                then needs `steps` and `cfg`.
            reference: whose behaviour to reproduce where Candle, Stability and diffusers differ
                ("default", "candle", "stability", "diffusers", or a `Reference`).
            dtype: the compute dtype; default bfloat16 on CUDA, float16 on MPS, float32 on the CPU.
            device: default CUDA, then MPS, then the CPU.
            keep: "auto", "all" or "stage" (sampling/residency.py).
            on_load: `on_load(name, module)` once per actual load ("clip_l", "clip_g", "t5",
                "mmdit", "vae"): a place for forward hooks or adapters.
            compile: run the MMDiT through `torch.compile` (the first step then includes compilation).
        """
        self.files = files
        self.variant = variant_named(variant) if variant is not None else None
        self.reference = Reference.named(reference or "default")
        self.keep = check_keep(keep)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype) if dtype is not None else default_dtype(self.device)
        self.compile = compile
        logger.info("%s, %s", describe(self.device), str(self.dtype).removeprefix("torch."))
        self.loras: list[tuple] = []  # (LoRA, scale, merge, strict), applied to each model as it loads
        self._user_on_load = on_load or (lambda name, module: None)
        self.models = ResidentModels(self.device, self._adapt)
        self._tokenizers: dict[str, object] = {}
        with open_checkpoint(files.checkpoint) as checkpoint:
            self.mmdit_config = mmdit.Config.from_state_dict(checkpoint.component(mmdit.PREFIX).shapes())
        self.memory = memory.StageMemory(files, self.dtype, self.device, self.reference, self.mmdit_config.hidden_size)

    @classmethod
    def from_variant(
        cls,
        which: str,
        *,
        files: Mapping[str, str | None] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        keep: str = "auto",
        reference: str | Reference | None = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        on_load: Callable[[str, nn.Module], None] | None = None,
        compile: bool = False,
    ) -> StableDiffusion3:
        """A pipeline for one of the four variants, its files from the Hub cache (downloaded once).

        Args:
            which: "3-medium", "3.5-large", "3.5-large-turbo" or "3.5-medium".
            files: local files overriding the Hub's, by name: `checkpoint`, `clip_l`, `clip_g`,
                `t5xxl`, `vae`, `clip_l_tokenizer`, `clip_g_tokenizer`, `t5_tokenizer`.
                `{"t5xxl": None}` runs without T5 (zeros in its place; saves ~10 GB).
            device, dtype, keep, reference, on_load, compile: as for the constructor.
            revision, cache_dir: the Hub revision of the model repositories and the cache folder.

        `generate()` then defaults to the variant's settings (Candle's): 28 steps at cfg 4.0, or 4
        steps at cfg 1.0 for 3.5-large-turbo, shift 3.0; `slg=True` turns on 3.5-medium's
        skip-layer guidance (scale 2.5 on blocks 7-9, steps in (1 %, 20 %)).
        The gated stabilityai repositories need an accepted licence and HF_TOKEN.
        """
        chosen = variant_named(which)  # every argument is checked before anything is downloaded
        Reference.named(reference or "default")
        check_keep(keep)
        resolve_device(device)
        if dtype is not None:
            resolve_dtype(dtype)
        resolved = model_files(chosen, files, revision=revision, cache_dir=cache_dir)
        return cls(resolved, variant=chosen, reference=reference, dtype=dtype, device=device, keep=keep,
                   on_load=on_load, compile=compile)

    # -- adapters --------------------------------------------------------------------------------
    def add_lora(self, path, scale: float = 1.0, *, merge: bool = True, strict: bool = True) -> LoRA:
        """Apply a LoRA file (diffusers/PEFT, kohya or original names; or a `LoRA` already read) to this
        pipeline's models: now to those loaded, at load to the rest. Returns the LoRA (its `sha256`).
        `merge=False` keeps the weights untouched and adds the delta at forward time (docs/lora.md)."""
        lora = path if isinstance(path, LoRA) else load_lora(path)
        self.loras.append((lora, scale, merge, strict))
        for name, module in self.models.models.items():
            lora.apply({name: module}, scale, merge=merge, strict=strict, only=name)
        return lora

    def _adapt(self, name: str, module: nn.Module) -> None:
        for lora, scale, merge, strict in self.loras:
            lora.apply({name: module}, scale, merge=merge, strict=strict, only=name)
        self._user_on_load(name, module)

    # -- residency -------------------------------------------------------------------------------
    def unload(self) -> None:
        """Free every loaded model; the next `generate()` loads what it needs again."""
        self.models.release()

    def __enter__(self) -> StableDiffusion3:
        return self

    def __exit__(self, *exc) -> None:
        self.unload()

    # -- the call --------------------------------------------------------------------------------
    def generate(
        self,
        prompts: str | Sequence[str],
        negative_prompts: str | Sequence[str] | None = None,
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
        latents: torch.Tensor | None = None,
        tile_size: int | None = None,
        on_step: StepCallback | None = None,
        attention_backend=None,
        quiet: bool = False,
        init_image: ImageLike | None = None,
        strength: float | None = None,
        mask: ImageLike | None = None,
    ) -> GenerationResult:
        """Generate `num_images` images for each prompt; image k (counting across prompts) uses seed + k.

        Args:
            negative_prompts: one per prompt (or one for all; None for ""), the unconditional prompt.
            steps, cfg, shift: default to the variant's.
            slg: skip-layer guidance: True for the variant's settings, or explicit settings.
            sampler_name: "euler" (Candle, diffusers) or "dpmpp_2m" (Stability).
            sigmas: an explicit schedule, from at most 1 down to 0 (overrides steps and shift).
            latents: initial noise (n, 16, h/8, w/8) or (1, ...) for every image, instead of seeds.
            tile_size: decode in tiles of this many latent pixels.
            on_step: `on_step(step, steps, latents)` after every step.
            attention_backend: a context manager around denoising (e.g. torch's `sdpa_kernel`).
            quiet: no progress bar.
            init_image: image to image (a PIL image, a path, or a (1, 3, H, W) tensor in [0, 1]),
                resized to height x width as diffusers' image processor resizes it.
            strength: how much of the schedule runs, in (0, 1] (default 0.6 with an `init_image`).
            mask: inpainting: white repaints, black keeps `init_image` (the same size as it).
            (sampling/img2img.py explains both, and where the references differ.)
        """
        image, mask_image = img2img.check_inputs(init_image, strength, mask)
        if image is not None and latents is not None:
            raise ConfigurationError("`latents` and `init_image` do not go together: the image sets the start")
        options = self.options(height=height, width=width, steps=steps, cfg=cfg, shift=shift, seed=seed,
                               num_images=num_images, batch_size=batch_size, slg=slg, sampler_name=sampler_name,
                               sigmas=sigmas, tile_size=tile_size)
        if image is not None:
            strength = 0.6 if strength is None else strength
            skip = img2img.start_index(options.steps, strength, self.reference.img2img_start)  # < steps for strength > 0
            options = dataclasses.replace(options, schedule=options.schedule[skip:])
        prompts, negative_prompts = prompt_lists(prompts, negative_prompts)
        per_image = [i for i in range(len(prompts)) for _ in range(num_images)]
        seeds = [seed + k for k in range(len(per_image))]
        timings = {"load": 0.0, "encode": 0.0, "denoise": 0.0, "decode": 0.0}
        staged = self.plan(options)

        context, y = self._encode(list(prompts) + list(negative_prompts), staged, timings)
        n, index = len(prompts), torch.tensor(per_image)
        cond = Conditioning(context[:n][index], y[:n][index], context[n:][index], y[n:][index])
        if image is None:
            start, blend = start_latents(latents, seeds, options.height, options.width), None
        else:
            start, blend = self._image_start(image, mask_image, seeds, options, staged, timings)
        final = self._denoise(cond, start, options, staged, timings, on_step, attention_backend, quiet, blend)
        shift = mask_image is None or self.reference.inpaint_decode_shift
        images = self._decode(final, options, staged, timings, shift=shift)
        return GenerationResult(
            images=images, latents=final.cpu(), seeds=seeds, prompts=[prompts[i] for i in per_image],
            negative_prompts=[negative_prompts[i] for i in per_image], steps=options.steps, timings=timings,
        )

    def generate_many(self, prompts, **settings):
        """Stream images for many prompts, each handed back as soon as it is decoded: see
        `sd3.sampling.stream.generate_many` (this pipeline's models stay loaded as `keep` says)."""
        return generate_many(self, prompts, **settings)

    def options(self, **settings) -> GenerationOptions:
        """`generate()`'s settings, checked against this pipeline's variant and checkpoint (nothing loads)."""
        sigmas = settings.pop("sigmas")
        options = GenerationOptions.resolve(
            self.variant, self.reference, sampler=settings.pop("sampler_name"),
            sigmas=list(sigmas) if sigmas is not None else None, **settings,
        )
        limit = self.mmdit_config.max_image_size  # the checkpoint's position table
        for name, side in (("height", options.height), ("width", options.width)):
            if side > limit:
                raise ConfigurationError(f"`{name}` {side} exceeds this checkpoint's limit of {limit} pixels (its position table)")
        return options

    def auto_batch_size(self, options: GenerationOptions, cap: int = 8) -> int:
        """The largest batch, at most `cap`, whose denoising and decoding the memory check admits (1 if unknown)."""
        return self.memory.largest_batch(options, self._context_tokens(), self.models, cap)

    def plan(self, options: GenerationOptions) -> bool:
        """Whether a call with `options` runs staged (models freed after their stage); a staged
        call first frees whatever an earlier call left loaded."""
        staged = not self.memory.fits_together(self.keep, self.models, options, self._context_tokens())
        if staged:
            self.models.release()
        return staged

    def _image_start(self, image, mask_image, seeds, options, staged, timings) -> tuple[torch.Tensor, img2img.Blend | None]:
        """Image to image: the noised start latents (n, 16, h, w) float32 and, when inpainting, the
        blend applied after each step (sampling/img2img.py)."""
        pixels = img2img.preprocess_image(image, options.height, options.width)
        model = self._vae("image encoding", options, "use a smaller `height`/`width`", timings)
        x0, noise = img2img.encode_start(model, pixels, seeds, self.reference.posterior)
        del model
        if staged:
            self.models.release("vae")
        blend = None if mask_image is None else img2img.Blend(
            x0, noise, img2img.preprocess_mask(mask_image, options.height, options.width), options.schedule)
        return img2img.noised(x0, noise, options.schedule[0]), blend

    def _vae(self, stage: str, options: GenerationOptions, advice: str, timings: dict) -> nn.Module:
        """The VAE, loaded once the memory check admits `stage` (encoding or decoding) at `options`' size."""
        activation = self.memory.activations(options, self._context_tokens())["vae"]
        self.memory.check(stage, ("vae",), self.models, activation, advice)
        return self._load("vae", lambda: vae_lib.load_vae(self.files.vae, dtype=self.dtype, device=self.device), timings)

    def _context_tokens(self) -> int:
        t5 = 0 if self.files.t5xxl is None else self.reference.t5_length
        return 77 + t5

    def _load(self, name: str, load: Callable[[], nn.Module], timings: dict, prepare=None) -> nn.Module:
        if name in self.models:
            return self.models.get(name, load)
        start = time.perf_counter()
        module = self.models.get(name, load, prepare)
        timings["load"] += time.perf_counter() - start
        return module

    # -- stage 1: text ---------------------------------------------------------------------------
    def _text_encoder(self, timings: dict) -> clip.TripleTextEncoder:
        ref, files, dtype, device = self.reference, self.files, self.dtype, self.device
        self.memory.check("text encoding", TEXT_ENCODERS, self.models, 0,
                          'use `dtype="bfloat16"` or `files["t5xxl"]=None` (saves ~10 GB), or `device="cpu"`')
        clip_l = self._load("clip_l", lambda: clip.load_clip_l(files.clip_l, dtype=dtype, device=device), timings)
        clip_g = self._load("clip_g", lambda: clip.load_clip_g(
            files.clip_g, dtype=dtype, device=device, hidden_act=ref.clip_g_gelu), timings)
        t5 = None
        if files.t5xxl is not None:
            t5 = self._load("t5", lambda: clip.load_t5(files.t5xxl, dtype=dtype, device=device), timings)
        if not self._tokenizers:
            self._tokenizers = {
                "clip_l": clip.CLIPTokenizer(files.clip_l_tokenizer, pad_token=ref.clip_l_pad),
                "clip_g": clip.CLIPTokenizer(files.clip_g_tokenizer, pad_token=ref.clip_g_pad),
                "t5": clip.T5Tokenizer(files.t5_tokenizer, max_length=ref.t5_length, truncate=ref.t5_truncate)
                if files.t5xxl is not None else None,
            }
        tok = self._tokenizers
        return clip.TripleTextEncoder(clip_l, tok["clip_l"], clip_g, tok["clip_g"], t5, tok["t5"],
                                      t5_length=ref.t5_length, context_dim=self.mmdit_config.context_dim)

    def _encode(self, prompts: list[str], staged: bool, timings: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (context (n, l, 4096), y (n, 2048))."""
        encoder = self._text_encoder(timings)
        start = time.perf_counter()
        context, y = encoder.encode(prompts)
        timings["encode"] += time.perf_counter() - start
        del encoder
        if staged:
            self.models.release(*TEXT_ENCODERS)
        return context, y

    # -- stage 2: denoising ----------------------------------------------------------------------
    def _denoise(
        self, cond: Conditioning, noise: torch.Tensor, options: GenerationOptions, staged: bool, timings: dict,
        on_step: StepCallback | None = None, attention_backend=None, quiet: bool = True, blend: img2img.Blend | None = None,
    ) -> torch.Tensor:
        """Noise (n, 16, h, w) -> final latents (n, 16, h, w) float32, in batches."""
        activation = self.memory.activations(options, cond.context.shape[1])["mmdit"]
        self.memory.check("denoising", ("mmdit",), self.models, activation,
                          'use `dtype="bfloat16"`, a smaller `height`/`width` or `batch_size=1`')
        prepare = torch.compile if self.compile else None
        model = self._load("mmdit", lambda: mmdit.load_mmdit(self.files.checkpoint, dtype=self.dtype, device=self.device),
                           timings, prepare)
        ref, schedule, sample = self.reference, options.schedule.to(self.device), sampler(options.sampler)
        batches = range(0, noise.shape[0], options.batch_size)
        bar = tqdm(total=options.steps * len(batches), desc="denoising", unit="step", disable=quiet, leave=False)

        def after_step(step: int, steps: int, x: torch.Tensor) -> None:
            bar.update()
            if on_step is not None:
                on_step(step, steps, x)

        outputs = []
        start = time.perf_counter()
        with torch.no_grad(), attention_backend or contextlib.nullcontext(), bar:
            for first in batches:
                part = slice(first, first + options.batch_size)
                batch_cond = Conditioning(*(t[part] for t in (cond.context, cond.y, cond.negative_context, cond.negative_y)))
                velocity = GuidedVelocity(
                    model, batch_cond, cfg=options.cfg, slg=options.slg, steps=options.steps,
                    uncond_first=ref.uncond_first, uncond_at_cfg_one=ref.uncond_at_cfg_one,
                )
                x = noise[part].to(self.device, torch.float32)
                round_to = self.dtype if ref.round_latents else None
                outputs.append(sample(velocity, x, schedule, round_to=round_to, on_step=after_step,
                                      after_step=blend.part(part, self.device) if blend else None))
        timings["denoise"] += time.perf_counter() - start
        del model
        if staged:
            self.models.release("mmdit")
        latents = torch.cat(outputs)
        if not torch.isfinite(latents).all():
            raise SamplingError(
                "the latents contain NaN or inf; the usual cause is float16 overflow (in T5 or the MMDiT): "
                'use `dtype="bfloat16"` or `dtype="float32"`'
            )
        return latents

    # -- stage 3: decoding -----------------------------------------------------------------------
    def _decode(
        self, latents: torch.Tensor, options: GenerationOptions, staged: bool, timings: dict, shift: bool = True
    ) -> list[Image.Image]:
        """Model-space latents (n, 16, h, w) -> n PIL images."""
        model = self._vae("decoding", options, 'use `batch_size=1`, `dtype="bfloat16"` or a smaller `height`/`width`',
                          timings)
        images = []
        start = time.perf_counter()
        with torch.no_grad():
            for first in range(0, latents.shape[0], options.batch_size):
                part = latents[first : first + options.batch_size].to(self.device)
                images += vae_lib.to_pil(vae_lib.decode_latents(model, part, tile_size=options.tile_size, shift=shift))
        timings["decode"] += time.perf_counter() - start
        del model
        if staged:
            self.models.release("vae")
        return images

