"""Text to image in public stages, as Candle's main.rs: encode the prompts, denoise, decode.

    import sd3
    pipe = sd3.StableDiffusion3.from_variant("3.5-medium")          # files from the Hub cache
    result = pipe.generate(["a photo of a cat"], seed=0)             # the variant's steps and cfg
    result.images[0].save("cat.png")

The stages can also be called one at a time: `encode`, `denoise`, `decode` (README, "The stages,
one at a time"). `generate()` checks everything first (`check`), then sampling/run.py runs the stages; every stage
loads, keeps and frees its models through `pipe.lifecycle` (sampling/lifecycle.py), as the `keep`
policy says: a notebook loop loads each model once, and a small machine runs one stage at a time.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import replace
from collections.abc import Callable, Mapping, Sequence

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
from sd3.sampling import checks, control, img2img, memory, run, stream
from sd3.sampling.components import Components
from sd3.sampling.conditioning import Conditioning
from sd3.sampling.guidance import GuidedVelocity, SkipLayerGuidanceConfig
from sd3.sampling.hub import ModelFiles, model_files
from sd3.sampling.img2img import ImageLike
from sd3.sampling.lifecycle import STAGES, ModelLifecycle
from sd3.sampling.options import GenerationOptions, check_tile_size
from sd3.sampling.previews import lend
from sd3.sampling.reference import Reference
from sd3.sampling.requests import prompt_lists
from sd3.sampling.residency import ResidentModels, check_keep
from sd3.sampling.run import GenerationResult
from sd3.sampling.samplers import StepCallback, sampler, step_callback
from sd3.sampling.variants import Variant, variant as variant_named

logger = logging.getLogger(__name__)


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
        decoder: str = "vae",
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
                "mmdit", "vae", "taesd"): a place for forward hooks or adapters.
            compile: run the MMDiT through `torch.compile` (the first step then includes compilation).
            decoder: what decodes the final images: "vae", or "taesd3", the tiny autoencoder
                (`files.taesd`; far faster, less detail: vae/taesd.py).
        """
        checks.check_decoder(decoder, files.taesd)
        self.files, self.decoder = files, decoder
        self.variant = variant_named(variant) if variant is not None else None
        self.reference = Reference.named(reference or "default")
        self.keep = check_keep(keep)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype) if dtype is not None else default_dtype(self.device)
        logger.info("%s, %s", describe(self.device), str(self.dtype).removeprefix("torch."))
        self.loras: list[tuple] = []  # (LoRA, scale, merge, strict), applied to each model as it loads
        self._user_on_load = on_load or (lambda name, module: None)
        self.models = ResidentModels(self.device, self._adapt)
        self.components = Components(files, self.dtype, self.reference)
        with open_checkpoint(files.checkpoint) as checkpoint:
            self.mmdit_config = mmdit.Config.from_state_dict(checkpoint.component(mmdit.PREFIX).shapes())
        self.memory = memory.StageMemory(files, self.dtype, self.device, self.reference, self.mmdit_config.hidden_size)
        self.lifecycle = ModelLifecycle(
            self.models, self.memory, self.keep, self.components.loaders(self.device), {"mmdit": torch.compile} if compile else {},
            context_tokens=self.reference.clip_rows + (0 if files.t5xxl is None else self.reference.t5_rows),
            stages={**STAGES, "decode": replace(STAGES["decode"], models=(checks.DECODERS[decoder],))},
        )

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
        decoder: str = "vae",
    ) -> StableDiffusion3:
        """A pipeline for one of the four variants, its files from the Hub cache (downloaded once).

        Args:
            which: "3-medium", "3.5-large", "3.5-large-turbo" or "3.5-medium".
            files: local files overriding the Hub's, by name: `checkpoint`, `clip_l`, `clip_g`,
                `t5xxl`, `vae`, `clip_l_tokenizer`, `clip_g_tokenizer`, `t5_tokenizer`, and
                `taesd` (TAESD3, local only, for previews and `decoder="taesd3"`).
                `{"t5xxl": None}` runs without T5 (zeros in its place; saves ~10 GB).
            device, dtype, keep, reference, on_load, compile, decoder: as for the constructor.
            revision, cache_dir: the Hub revision of the model repositories and the cache folder.

        `generate()` then defaults to the variant's settings (Candle's): 28 steps at cfg 4.0, or 4
        steps at cfg 1.0 for 3.5-large-turbo, shift 3.0; `slg=True` turns on 3.5-medium's
        skip-layer guidance (scale 2.5 on blocks 7-9, steps in (1 %, 20 %)).
        The gated stabilityai repositories need an accepted licence and HF_TOKEN.
        """
        chosen = variant_named(which)  # every argument is checked before anything is downloaded
        checks.check_decoder(decoder, (files or {}).get("taesd"))
        Reference.named(reference or "default")
        check_keep(keep)
        resolve_device(device)
        if dtype is not None:
            resolve_dtype(dtype)
        resolved = model_files(chosen, files, revision=revision, cache_dir=cache_dir)
        return cls(resolved, variant=chosen, reference=reference, dtype=dtype, device=device, keep=keep,
                   on_load=on_load, compile=compile, decoder=decoder)

    # -- adapters --------------------------------------------------------------------------------
    def add_lora(self, path, scale: float = 1.0, *, merge: bool = True, strict: bool = True) -> LoRA:
        """Apply a LoRA file (diffusers/PEFT, SimpleTuner, kohya, OneTrainer, LyCORIS or original names;
        or a `LoRA`) to this pipeline's models: now to those loaded, at load to the rest. Returns the
        LoRA. `merge=False` keeps the weights untouched and adds the delta at forward time (docs/lora.md)."""
        if not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ConfigurationError(f"a LoRA's `scale` must be a finite number, got {scale!r}")
        lora = path if isinstance(path, LoRA) else load_lora(path)
        lora.check(self.components.architectures(), strict)  # every module against this checkpoint: nothing loads
        self.loras.append((lora, scale, merge, strict))
        for name, module in self.models.models.items():
            lora.apply({name: module}, scale, merge=merge, strict=strict, only=name)
        return lora

    def _adapt(self, name: str, module: nn.Module) -> None:
        for lora, scale, merge, strict in self.loras if not name.startswith("controlnet:") else ():  # never a ControlNet
            lora.apply({name: module}, scale, merge=merge, strict=strict, only=name)
        self._user_on_load(name, module)

    # -- residency -------------------------------------------------------------------------------
    def unload(self) -> None:
        """Free every loaded model; the next stage loads what it needs again."""
        self.models.release()

    def __enter__(self) -> StableDiffusion3:
        return self

    def __exit__(self, *exc) -> None:
        self.unload()

    # -- checking (nothing loads): the check layer of sampling/checks.py, as methods ------------
    options = checks.options
    check = checks.check

    def auto_batch_size(self, options: GenerationOptions, cap: int = 8) -> int:
        """The largest batch, at most `cap`, whose denoising and decoding the memory check admits (1 if unknown)."""
        return self.memory.largest_batch(options, self.lifecycle.context_tokens, self.models, cap)

    # -- stage 1: text -> conditioning -----------------------------------------------------------
    def encode(self, prompts: str | Sequence[str], negative_prompts: str | Sequence[str] | None = None) -> Conditioning:
        """Prompts (n) and negative prompts (one for all, or one each; None: "") -> `Conditioning`:
        context (n, 77 + T5 length, 4096) and y (n, 2048) for each, in the pipeline's dtype and device.

        All 2n texts go through the encoders in one batch, prompts first (sampling/run.py says why that is
        fixed); without T5 its rows are zeros. Under ComfyUI's rules each text keeps its length (clip/weighted.py)."""
        prompts, negative_prompts = prompt_lists(prompts, negative_prompts)
        tokenizers = self.components.tokenizers()
        with self.lifecycle.stage("encode") as models:
            encoder = clip.TripleTextEncoder(
                models["clip_l"], tokenizers["clip_l"], models["clip_g"], tokenizers["clip_g"],
                models.get("t5"), tokenizers["t5"], t5_length=self.reference.t5_length,
                context_dim=self.mmdit_config.context_dim,
            )
            context, y, lengths = encoder.encode_with_lengths(prompts + negative_prompts)
        n = len(prompts)
        return Conditioning(context[:n], y[:n], context[n:], y[n:], *((None, None) if lengths is None else lengths.split(n)))

    def encode_image(self, image: ImageLike, seeds: list[int], *, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image to image's start: the image, resized to height x width, through the VAE encoder.

        Returns (x0, noise), each (len(seeds), 16, height/8, width/8) float32 on the CPU: x0 in model
        space (the posterior's mean, or a sample per seed as diffusers draws it: `Reference.posterior`)
        and each seed's noise."""
        pixels = img2img.preprocess_image(img2img.open_image(image), height, width)
        activation = self.memory.decode_bytes(1, height, width, None)
        with self.lifecycle.stage("encode_image", activation) as models:
            return img2img.encode_start(models["vae"], pixels, seeds, self.reference.posterior)

    # -- stage 2: denoising ----------------------------------------------------------------------
    def denoise(
        self,
        conditioning: Conditioning,
        latents: torch.Tensor,
        options: GenerationOptions,
        *,
        on_step: StepCallback | None = None,
        blend: img2img.Blend | None = None,
        attention_backend=None,
        quiet: bool = True,
        indices: Sequence[int] | None = None,
        controls: Sequence[tuple[control.ControlInput, torch.Tensor]] = (),
    ) -> torch.Tensor:
        """Start latents (n, 16, h, w) -> final latents (n, 16, h, w) float32 on the CPU, over
        `options.schedule` (from `options()`), in batches of `options.batch_size`.

        Args:
            conditioning: one row per image (`conditioning.rows` repeats a prompt's).
            latents: where the schedule starts: noise for σ = 1, or a noised image (img2img).
            on_step: called with a `Step` (sampling/samplers.py: σ, the latents, the predicted x0,
                the velocity) after every step; `on_step(step, steps, latents)` still works. A
                `Preview` (sampling/previews.py) that decodes with TAESD3 or the VAE is lent it.
            blend: inpainting's replacement of the kept area after every step (sampling/img2img.py).
            attention_backend: a context manager around it (e.g. torch's `sdpa_kernel`).
            indices: the images' indices, for `Step.indices` (default 0 .. n - 1).
            controls: checked `ControlInput`s with their control latents (sampling/control.py: 2n
                rows, n without CFG), their ControlNets registered (`control.register`).

        Raises:
            ConfigurationError: latents and conditioning of different lengths, or latents not of
                the options' size.
            SamplingError: the result holds NaN or inf (usually float16 overflow).
        """
        if not isinstance(options, GenerationOptions):
            raise ConfigurationError("`options` must come from pipe.options(...), which checks them")
        if not isinstance(conditioning, Conditioning) or not isinstance(latents, torch.Tensor):
            raise ConfigurationError("denoise() takes a `conditioning` from encode() and `latents` as a tensor")
        checks.check_callback(on_step, self.files.taesd)
        n, shape = len(conditioning), (16, options.height // 8, options.width // 8)
        if tuple(latents.shape) != (n, *shape):
            raise ConfigurationError(f"`latents` must be {(n, *shape)}: one per `conditioning` row, at the size of "
                                     f"`options`; got {tuple(latents.shape)}")
        activation = self.memory.activations(options, conditioning.context.shape[1])["mmdit"]
        ref, schedule, sample = self.reference, options.schedule.to(self.device), sampler(options.sampler)
        batches = range(0, n, options.batch_size)
        bar = tqdm(total=options.steps * len(batches), desc="denoising", unit="step", disable=quiet, leave=False)
        callback, indices = step_callback(on_step), list(range(n)) if indices is None else list(indices)

        def after_step(step) -> None:
            bar.update()
            if callback is not None:
                callback(step)

        outputs = []
        preview_bytes = self.memory.decode_bytes(options.batch_size, options.height, options.width, None)
        with self.lifecycle.stage("denoise", activation) as models, lend(self.lifecycle, on_step, preview_bytes), torch.no_grad(), bar, \
                self.lifecycle.hold(control.stage_name([c for c, _ in controls])) if controls else contextlib.nullcontext() as nets, \
                attention_backend or contextlib.nullcontext():
            for first in batches:
                part = slice(first, first + options.batch_size)
                guided = options.cfg != 1.0 or ref.uncond_at_cfg_one
                active = [control.ActiveControl(nets[c.name], control.rows(latent, n, part, guided).to(self.device), c)
                          for c, latent in controls]
                velocity = GuidedVelocity(
                    models["mmdit"], conditioning.rows(part).to(self.device), cfg=options.cfg, slg=options.slg,
                    steps=options.steps, uncond_first=ref.uncond_first, uncond_at_cfg_one=ref.uncond_at_cfg_one,
                    controls=active, controls_after_last_block=control.after_last_block(ref, [c for c, _ in controls]),
                )
                x = latents[part].to(self.device, torch.float32)
                outputs.append(sample(velocity, x, schedule, round_to=self.dtype if ref.round_latents else None,
                                      on_step=after_step if callback or not quiet else None, indices=indices[part],
                                      after_step=blend.part(part, self.device) if blend else None).cpu())
        final = torch.cat(outputs)
        if not torch.isfinite(final).all():
            raise SamplingError(
                "the latents contain NaN or inf; the usual cause is float16 overflow (in T5 or the MMDiT): "
                'use `dtype="bfloat16"` or `dtype="float32"`'
            )
        return final

    # -- stage 3: decoding -----------------------------------------------------------------------
    def decode(
        self, latents: torch.Tensor, *, batch_size: int = 1, tile_size: int | None = None, vae_shift: bool = True
    ) -> list[Image.Image]:
        """Model-space latents (n, 16, h, w) -> n RGB PIL images of 8h x 8w, `batch_size` at a time.

        Args:
            tile_size: decode in tiles of this many latent pixels (bounds the VAE's memory).
            vae_shift: False leaves out the VAE's shift factor, as diffusers' inpainting does (`Reference`).

        Raises:
            ConfigurationError: latents not (n, 16, h, w), a `batch_size` below 1, a `tile_size` too small.
        """
        if latents.ndim != 4 or latents.shape[1] != 16:
            raise ConfigurationError(f"`latents` must be (n, 16, h, w), got {tuple(latents.shape)}")
        if batch_size < 1:
            raise ConfigurationError(f"`batch_size` must be at least 1, got {batch_size}")
        check_tile_size(tile_size)
        activation = self.memory.decode_bytes(batch_size, 8 * latents.shape[2], 8 * latents.shape[3], tile_size,
                                              tiny=self.decoder == "taesd3")
        images = []
        with self.lifecycle.stage("decode", activation) as models, torch.no_grad():
            for first in range(0, latents.shape[0], batch_size):
                part = latents[first : first + batch_size].to(self.device)
                if self.decoder == "taesd3":  # model-space latents straight in (vae/taesd.py)
                    decoded = models["taesd"].decode(part)
                else:
                    decoded = vae_lib.decode_latents(models["vae"], part, tile_size=tile_size, shift=vae_shift)
                images += vae_lib.to_pil(decoded, self.reference.pixel_rounding)
        return images

    # -- the whole call --------------------------------------------------------------------------
    def generate(
        self,
        prompts: str | Sequence[str] | None = None,
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
        scheduler: str | None = None,
        negative_zero: bool = False,
        latents: torch.Tensor | None = None,
        tile_size: int | None = None,
        on_step: StepCallback | None = None,
        attention_backend=None,
        quiet: bool = False,
        init_image: ImageLike | None = None,
        strength: float | None = None,
        mask: ImageLike | None = None,
        conditioning: Conditioning | None = None,
        control: Sequence[control.ControlInput] | None = None,
    ) -> GenerationResult:
        """Generate `num_images` images per prompt; image k (across prompts) uses seed + k (`Reference.noise`).

        Args:
            negative_prompts: one per prompt (or one for all; None for ""), the unconditional prompt.
            steps, cfg, shift: default to the variant's.
            slg: skip-layer guidance: True for the variant's settings, or explicit settings.
            sampler_name: "euler" (Candle, diffusers) or "dpmpp_2m" (Stability).
            sigmas: an explicit schedule, from at most 1 down to 0 (overrides steps and shift).
            scheduler: the schedule by name instead of the reference's (sampling/schedules.py: ours, ComfyUI's).
            negative_zero: zero the negative context and pooled vector (ComfyUI's `ConditioningZeroOut`).
            latents: initial noise (n, 16, h/8, w/8) or (1, ...) for every image, instead of seeds.
            tile_size: decode in tiles of this many latent pixels.
            on_step: called with a `Step` after every step (σ, latents, predicted x0, velocity; see
                `denoise`), e.g. a `Preview`; `on_step(step, steps, latents)` still works.
            attention_backend: a context manager around denoising (e.g. torch's `sdpa_kernel`).
            quiet: no progress bar.
            init_image: image to image (a PIL image, a path, or a (1, 3, H, W) tensor in [0, 1]),
                resized to height x width as diffusers' image processor resizes it.
            strength: how much of the schedule runs, in (0, 1] (default 0.6 with an `init_image`).
            mask: inpainting: white repaints, black keeps `init_image` (the same size as it).
                (sampling/img2img.py explains both, and where the references differ.)
            conditioning: from `encode()` (or `Conditioning.load`), one row per prompt, in place of
                the text: the text encoders do not load. `prompts` may still name the rows.
            control: `ControlInput`s (ControlNet file, control image, scale, start, end; summed);
                Stability's nets make its ControlNet settings the defaults (sampling/control.py).

        Raises:
            ConfigurationError: any setting or input that cannot run, before any model loads.
        """
        work = self.check(prompts, negative_prompts, height=height, width=width, steps=steps, cfg=cfg, shift=shift,
                          seed=seed, num_images=num_images, batch_size=batch_size, slg=slg, sampler_name=sampler_name,
                          sigmas=sigmas, scheduler=scheduler, negative_zero=negative_zero, latents=latents, tile_size=tile_size,
                          init_image=init_image, strength=strength, mask=mask, conditioning=conditioning, control=control)
        checks.check_callback(on_step, self.files.taesd)
        # encode, start latents, denoise, decode (sampling/run.py)
        rendered = list(run.render(self, work, on_step=on_step, attention_backend=attention_backend, quiet=quiet))
        return run.result(work, rendered, self.lifecycle.timings)

    def generate_many(self, prompts, **settings):
        """Stream images for many prompts, each handed back as soon as it is decoded: see
        `sd3.sampling.stream.generate_many` (this pipeline's models stay loaded as `keep` says)."""
        return stream.generate_many(self, prompts, **settings)

