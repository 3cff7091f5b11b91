"""Text to image, stage by stage as Candle's main.rs: encode the prompts, free the encoders,
denoise, free the MMDiT, decode. Peak memory is the largest stage, not the sum of them.

    from sampling import StableDiffusion3, ModelFiles, Reference
    sd3 = StableDiffusion3(files, reference=Reference.named("default"))
    result = sd3.generate(["a photo of a cat"], height=1024, width=1024, steps=28, cfg=4.0, seed=0)
    result.images[0].save("cat.png")
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn

import clip
import mmdit
import vae as vae_lib
from common.checkpoint import open_checkpoint
from common.devices import resolve_device, resolve_dtype
from common.errors import ConfigurationError, SamplingError
from sampling import memory
from sampling.guidance import Conditioning, GuidedVelocity, SkipLayerGuidanceConfig
from sampling.noise import initial_noise
from sampling.reference import Reference
from sampling.samplers import StepCallback, sampler
from sampling.schedules import explicit_sigmas, sigmas as schedule_sigmas

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFiles:
    """Local paths of every file a generation reads (all-in-one files may appear several times)."""

    checkpoint: Path  # the MMDiT
    clip_l: Path
    clip_g: Path
    t5xxl: Path | None  # None: run without T5 (zeros in its place)
    vae: Path
    clip_l_tokenizer: Path
    clip_g_tokenizer: Path
    t5_tokenizer: Path | None


@dataclass
class GenerationResult:
    images: list[Image.Image]
    latents: torch.Tensor  # final model-space latents (n, 16, h, w), float32, before decoding
    seeds: list[int]
    prompts: list[str]
    denoise_seconds: float = 0.0
    steps: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class StableDiffusion3:
    """The whole pipeline over local files; every stage loads its model, runs, and frees it."""

    def __init__(
        self,
        files: ModelFiles,
        *,
        reference: Reference | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        on_load: Callable[[str, nn.Module], None] | None = None,
        compile: bool = False,
    ) -> None:
        """`on_load(name, module)` is called as each stage loads a model ("clip_l", "clip_g", "t5",
        "mmdit", "vae"): a place for forward hooks (scripts/audit.py) or adapters. `compile` runs
        the MMDiT through `torch.compile` (the first step then includes minutes of compilation)."""
        self.files = files
        self.compile = compile
        self.on_load = on_load or (lambda name, module: None)
        self.reference = reference or Reference.named("default")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype or ("bfloat16" if self.device.type == "cuda" else "float32"))
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            logger.info(
                "device %s: %s, %.1f GiB, bf16 %s", self.device, props.name, props.total_memory / 2**30,
                "supported" if torch.cuda.is_bf16_supported() else "not supported",
            )
        else:
            logger.info("device %s, %d threads", self.device, torch.get_num_threads())
        with open_checkpoint(files.checkpoint) as checkpoint:
            tensors = checkpoint.component(mmdit.PREFIX)
            self.mmdit_config = mmdit.Config.from_state_dict(tensors.shapes())
            self._mmdit_bytes = memory.weight_bytes(tensors, self.dtype)

    def check_size(self, height: int, width: int) -> None:
        """Raise ConfigurationError unless both sides are positive multiples of 16 within the position table."""
        limit = self.mmdit_config.max_image_size
        for name, side in (("height", height), ("width", width)):
            if side < 16 or side % 16:
                raise ConfigurationError(f"{name} must be a positive multiple of 16, got {side}")
            if side > limit:
                raise ConfigurationError(f"{name} {side} exceeds this checkpoint's limit of {limit} pixels (its position table)")

    def generate(
        self,
        prompts: list[str],
        negative_prompts: list[str] | None = None,
        *,
        height: int = 1024,
        width: int = 1024,
        steps: int = 28,
        cfg: float = 4.0,
        shift: float = 3.0,
        seed: int = 0,
        num_images: int = 1,
        batch_size: int = 1,
        slg: SkipLayerGuidanceConfig | None = None,
        sampler_name: str = "euler",
        sigmas: list[float] | None = None,
        latents: torch.Tensor | None = None,
        tile_size: int | None = None,
        on_step: StepCallback | None = None,
        attention_backend=None,
    ) -> GenerationResult:
        """Generate `num_images` images for each prompt; image k (counting across prompts) uses seed + k.

        Args:
            negative_prompts: one per prompt (or None for ""), used as the unconditional prompt.
            sigmas: an explicit schedule (overrides steps, shift and the reference's schedule).
            latents: initial noise (n, 16, h/8, w/8) or (1, ...) for every image, instead of seeds.
            tile_size: decode in tiles of this many latent pixels.
            attention_backend: a context manager around denoising (e.g. torch's `sdpa_kernel`).
        """
        if steps < 1 and sigmas is None:
            raise ConfigurationError(f"the number of steps must be at least 1, got {steps}")
        if num_images < 1 or batch_size < 1:
            raise ConfigurationError("--num-images and --batch-size must be at least 1")
        self.check_size(height, width)
        negative_prompts = negative_prompts or [""] * len(prompts)
        if len(negative_prompts) != len(prompts):
            raise ConfigurationError(f"{len(prompts)} prompts but {len(negative_prompts)} negative prompts")
        per_image = [i for i in range(len(prompts)) for _ in range(num_images)]
        seeds = [seed + k for k in range(len(per_image))]
        shape = (16, height // 8, width // 8)
        if latents is None:
            noise = initial_noise(seeds, *shape)
        elif tuple(latents.shape[1:]) != shape or latents.shape[0] not in (1, len(per_image)):
            raise ConfigurationError(
                f"initial latents must be (1 or {len(per_image)}, {shape[0]}, {shape[1]}, {shape[2]}) for a "
                f"{width}x{height} image, got {tuple(latents.shape)}"
            )
        else:
            noise = latents.float().expand(len(per_image), *shape)

        timings = {}
        start = time.perf_counter()
        context, y = self.encode(list(prompts) + list(negative_prompts))
        n = len(prompts)
        index = torch.tensor(per_image)
        cond = Conditioning(context[:n][index], y[:n][index], context[n:][index], y[n:][index])
        timings["encode"] = time.perf_counter() - start

        start = time.perf_counter()
        final = self.denoise(
            cond, noise, steps=steps, cfg=cfg, shift=shift, slg=slg, sampler_name=sampler_name, sigmas=sigmas,
            batch_size=batch_size, on_step=on_step, attention_backend=attention_backend,
        )
        timings["denoise"] = time.perf_counter() - start

        start = time.perf_counter()
        images = self.decode(final, batch_size, tile_size=tile_size)
        timings["decode"] = time.perf_counter() - start
        actual_steps = len(sigmas) if sigmas is not None else steps
        return GenerationResult(
            images, final.cpu(), seeds, [prompts[i] for i in per_image], timings["denoise"], actual_steps, timings
        )

    # -- stage 1 ---------------------------------------------------------------------------------
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (context (n, l, 4096), y (n, 2048)); the encoders are freed afterwards."""
        ref, files, dtype, device = self.reference, self.files, self.dtype, self.device
        needed = 0
        for path, prefix in ((files.clip_l, clip.CLIP_L_PREFIX), (files.clip_g, clip.CLIP_G_PREFIX), (files.t5xxl, clip.T5_PREFIX)):
            if path is not None:
                with open_checkpoint(path) as checkpoint:
                    needed += memory.weight_bytes(checkpoint.component(prefix), dtype)
        memory.check_fits("text encoding", needed, device, "use --dtype bf16 or --no-t5 (saves ~10 GB), or --cpu")
        clip_l = clip.load_clip_l(files.clip_l, dtype=dtype, device=device)
        clip_g = clip.load_clip_g(files.clip_g, dtype=dtype, device=device, hidden_act=ref.clip_g_gelu)
        t5 = clip.load_t5(files.t5xxl, dtype=dtype, device=device) if files.t5xxl else None
        for name, module in (("clip_l", clip_l), ("clip_g", clip_g), ("t5", t5)):
            if module is not None:
                self.on_load(name, module)
        encoder = clip.TripleTextEncoder(
            clip_l,
            clip.CLIPTokenizer(files.clip_l_tokenizer, pad_token=ref.clip_l_pad),
            clip_g,
            clip.CLIPTokenizer(files.clip_g_tokenizer, pad_token=ref.clip_g_pad),
            t5,
            clip.T5Tokenizer(files.t5_tokenizer, max_length=ref.t5_length, truncate=ref.t5_truncate)
            if files.t5xxl
            else None,
            t5_length=ref.t5_length,
            context_dim=self.mmdit_config.context_dim,
        )
        context, y = encoder.encode(prompts)
        del encoder, clip_l, clip_g, t5
        _free(device)
        return context, y

    # -- stage 2 ---------------------------------------------------------------------------------
    def denoise(
        self,
        cond: Conditioning,
        noise: torch.Tensor,
        *,
        steps: int,
        cfg: float,
        shift: float,
        slg: SkipLayerGuidanceConfig | None,
        sampler_name: str,
        sigmas: list[float] | None,
        batch_size: int,
        on_step: StepCallback | None = None,
        attention_backend=None,
    ) -> torch.Tensor:
        """Noise (n, 16, h, w) -> final latents (n, 16, h, w) float32, in batches; the MMDiT is freed afterwards."""
        ref, cfg_batch = self.reference, 2 if (cfg != 1.0 or self.reference.uncond_at_cfg_one) else 1
        tokens = cond.context.shape[1] + (noise.shape[2] // 2) * (noise.shape[3] // 2)
        needed = self._mmdit_bytes + memory.mmdit_activation_bytes(
            cfg_batch * batch_size, tokens, self.mmdit_config.hidden_size, self.dtype
        )
        memory.check_fits("denoising", needed, self.device, "use --dtype bf16, a smaller --height/--width or --batch-size 1")
        model = mmdit.load_mmdit(self.files.checkpoint, dtype=self.dtype, device=self.device)
        self.on_load("mmdit", model)
        if self.compile:
            model = torch.compile(model)
        schedule = explicit_sigmas(sigmas) if sigmas is not None else schedule_sigmas(ref.schedule, steps, shift)
        sample = sampler(sampler_name)
        outputs = []
        with torch.no_grad(), attention_backend or contextlib.nullcontext():
            for start in range(0, noise.shape[0], batch_size):
                part = slice(start, start + batch_size)
                batch_cond = Conditioning(*(t[part] for t in (cond.context, cond.y, cond.negative_context, cond.negative_y)))
                velocity = GuidedVelocity(
                    model, batch_cond, cfg=cfg, slg=slg, steps=len(schedule) - 1,
                    uncond_first=ref.uncond_first, uncond_at_cfg_one=ref.uncond_at_cfg_one,
                )
                x = noise[part].to(self.device, torch.float32)
                round_to = self.dtype if ref.round_latents else None
                outputs.append(sample(velocity, x, schedule.to(self.device), round_to=round_to, on_step=on_step))
        del model
        _free(self.device)
        latents = torch.cat(outputs)
        if not torch.isfinite(latents).all():
            raise SamplingError(
                "the latents contain NaN or inf; the usual cause is float16 overflow (in T5 or the MMDiT): "
                "use --dtype bf16 or float32"
            )
        return latents

    # -- stage 3 ---------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor, batch_size: int, tile_size: int | None = None) -> list[Image.Image]:
        """Model-space latents (n, 16, h, w) -> n PIL images; the VAE is freed afterwards."""
        height, width = latents.shape[2] * 8, latents.shape[3] * 8
        with open_checkpoint(self.files.vae) as checkpoint:
            needed = memory.weight_bytes(checkpoint.component(vae_lib.PREFIX), self.dtype)
        if tile_size is not None:  # activations then span one tile (of the whole batch), not the image
            height, width = min(height, 8 * tile_size), min(width, 8 * tile_size)
        needed += memory.vae_activation_bytes(batch_size, height, width, self.dtype)
        memory.check_fits("decoding", needed, self.device, "use --batch-size 1, --dtype bf16 or a smaller --height/--width")
        model = vae_lib.load_vae(self.files.vae, dtype=self.dtype, device=self.device)
        self.on_load("vae", model)
        images = []
        with torch.no_grad():
            for start in range(0, latents.shape[0], batch_size):
                decoded = vae_lib.decode_latents(model, latents[start : start + batch_size].to(self.device), tile_size=tile_size)
                images += vae_lib.to_pil(decoded)
        del model
        _free(self.device)
        return images
