"""Text to image from the command line, with the flags of Candle's stable-diffusion-3 example.

    python scripts/generate.py --which 3.5-medium --prompt "a photo of a cat" --final-image cat.png

Mirrors huggingface/candle candle-examples/examples/stable-diffusion-3/main.rs. Files come from the
Hugging Face Hub (gated: accept the licence, set HF_TOKEN) unless given locally with --checkpoint,
--clip-l, --clip-g, --t5xxl, --vae and the tokenizer flags. Every error is one line on stderr and a
non-zero exit (--verbose shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import secrets
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from common.checkpoint import open_checkpoint
from common.errors import ConfigurationError, DeviceError, SD3Error
from sampling import REFERENCES, SAMPLERS, VARIANTS, ModelFiles, Reference, StableDiffusion3, TOKENIZERS, variant
from sampling.hub import resolve

CANDLE_PROMPT = (
    "A cute rusty robot holding a candle torch in its hand, with glowing neon text \"LETS GO RUSTY\" "
    "displayed on its chest, bright background, high quality, 4k"
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Candle's flags, same names and defaults.
    p.add_argument("--prompt", default=CANDLE_PROMPT)
    p.add_argument("--uncond-prompt", default="", help="the negative prompt")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is available")
    p.add_argument("--tracing", action="store_true", help="write a torch.profiler Chrome trace (sd3-trace.json)")
    p.add_argument("--use-flash-attn", action="store_true", help="force the flash SDPA backend (CUDA only)")
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--which", choices=list(VARIANTS), default="3-medium")
    p.add_argument("--num-inference-steps", type=int, help="default: the variant's (28, or 4 for turbo)")
    p.add_argument("--cfg-scale", type=float, help="default: the variant's (4.0, or 1.0 for turbo)")
    p.add_argument("--time-shift", type=float, default=3.0)
    p.add_argument("--use-slg", action="store_true", help="skip-layer guidance (3.5-medium only)")
    p.add_argument("--seed", type=int, help="default: a random seed, printed and stored in the image")
    # Ours.
    p.add_argument("--final-image", default="out.png", help="PNG unless the extension says JPEG")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt (seeds seed, seed+1, ...)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--prompts-file", help="one prompt per line; output files are numbered")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--reference", choices=REFERENCES, default="default", help="whose behaviour to mirror (README)")
    p.add_argument("--t5-max-length", type=int, help="override the reference's T5 length")
    p.add_argument("--no-t5", action="store_true", help="zeros instead of T5 (saves ~10 GB)")
    p.add_argument("--sampler", choices=SAMPLERS, default="euler")
    p.add_argument("--compile", action="store_true", help="torch.compile the MMDiT (slow first step)")
    p.add_argument("--latents", help="initial noise: a .safetensors file with key 'latents'")
    p.add_argument("--save-latents", help="write the final latents (before decoding) to this .safetensors file")
    for flag in ("--checkpoint", "--clip-l", "--clip-g", "--t5xxl", "--vae"):
        p.add_argument(flag, help="local .safetensors file instead of the Hub")
    for flag in ("--clip-l-tokenizer", "--clip-g-tokenizer", "--t5-tokenizer"):
        p.add_argument(flag, help="local tokenizer.json instead of the Hub")
    p.add_argument("--revision", help="Hub revision of the model repos")
    p.add_argument("--cache-dir", help="Hub cache directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    return p


def model_files(args, which) -> ModelFiles:
    v = variant(which)
    hub = dict(revision=args.revision, cache_dir=args.cache_dir)
    checkpoint = resolve(args.checkpoint, v.checkpoint, flag="--checkpoint", **hub)
    # All-in-one checkpoints hold everything: a local --checkpoint serves the encoders of 3-medium too.
    inside = v.clip_l == v.checkpoint and args.checkpoint

    def encoder(local, file, flag):
        return resolve(local or (checkpoint if inside else None), file, flag=flag, **hub)

    return ModelFiles(
        checkpoint=checkpoint,
        clip_l=encoder(args.clip_l, v.clip_l, "--clip-l"),
        clip_g=encoder(args.clip_g, v.clip_g, "--clip-g"),
        t5xxl=None if args.no_t5 else encoder(args.t5xxl, v.t5xxl, "--t5xxl"),
        vae=resolve(args.vae, v.checkpoint, flag="--vae", **hub) if args.vae else checkpoint,
        clip_l_tokenizer=resolve(args.clip_l_tokenizer, TOKENIZERS["clip_l"], flag="--clip-l-tokenizer", cache_dir=args.cache_dir),
        clip_g_tokenizer=resolve(args.clip_g_tokenizer, TOKENIZERS["clip_g"], flag="--clip-g-tokenizer", cache_dir=args.cache_dir),
        t5_tokenizer=None if args.no_t5 else resolve(args.t5_tokenizer, TOKENIZERS["t5"], flag="--t5-tokenizer", cache_dir=args.cache_dir),
    )


def read_prompts(args) -> list[str]:
    if not args.prompts_file:
        return [args.prompt]
    path = Path(args.prompts_file)
    if not path.is_file():
        raise ConfigurationError(f"--prompts-file {path}: file not found")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ConfigurationError(f"--prompts-file {path} holds no prompt")
    return prompts


def read_latents(path: str) -> torch.Tensor:
    with open_checkpoint(path) as tensors:
        if "latents" not in tensors:
            raise ConfigurationError(f"--latents {path} has no tensor named 'latents' (found: {tensors.keys()[:5]})")
        return tensors.tensor("latents").clone()


class Progress:
    """A one-line progress bar over denoising steps on stderr."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.first, self.done = quiet, None, 0

    def __call__(self, step: int, steps: int, latents: torch.Tensor) -> None:
        now, self.done = time.perf_counter(), self.done + 1
        self.first = self.first or now  # rates count from the end of the first step
        if not self.quiet:
            rate = (self.done - 1) / (now - self.first) if now > self.first else 0.0
            bar = "#" * (20 * step // steps)
            print(f"\rdenoising [{bar:<20}] {step}/{steps} {rate:.2f} it/s", end="", file=sys.stderr, flush=True)
            if step == steps:
                print(file=sys.stderr)


def save_image(image, path: Path, parameters: dict) -> None:
    """PNG with an A1111-style `parameters` text chunk and the same as JSON; JPEG with a comment."""
    text = (
        f"{parameters['prompt']}\nNegative prompt: {parameters['negative_prompt']}\n"
        f"Steps: {parameters['steps']}, Sampler: {parameters['sampler']}, CFG scale: {parameters['cfg_scale']}, "
        f"Seed: {parameters['seed']}, Size: {parameters['width']}x{parameters['height']}, "
        f"Model: {parameters['which']}, Shift: {parameters['time_shift']}, Reference: {parameters['reference']}"
    )
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=95, comment=text.encode("utf-8"))
        return
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    info.add_text("sd3", json.dumps(parameters))
    image.save(path, pnginfo=info)


def run(args) -> None:
    v = variant(args.which)
    for name, side in (("--height", args.height), ("--width", args.width)):
        if side < 16 or side % 16:
            raise ConfigurationError(f"{name} must be a positive multiple of 16, got {side}")
    steps = args.num_inference_steps if args.num_inference_steps is not None else v.steps
    if steps < 1:
        raise ConfigurationError(f"--num-inference-steps must be at least 1, got {steps}")
    if args.use_slg and v.slg is None:
        raise ConfigurationError(f"--use-slg is only defined for 3.5-medium, not {args.which}")
    device = torch.device("cpu") if args.cpu else None
    if args.use_flash_attn and (args.cpu or not torch.cuda.is_available()):
        raise DeviceError("--use-flash-attn needs a CUDA device (the flash SDPA backend does not run on the CPU)")
    reference = Reference.named(args.reference)
    if args.t5_max_length is not None:
        reference = replace(reference, t5_length=args.t5_max_length)
    prompts = read_prompts(args)
    latents = read_latents(args.latents) if args.latents else None
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    logging.getLogger(__name__).info("seed %d", seed)

    sd3 = StableDiffusion3(
        model_files(args, args.which), reference=reference, dtype=args.dtype, device=device, compile=args.compile
    )
    cfg = args.cfg_scale if args.cfg_scale is not None else v.cfg
    attention = None
    if args.use_flash_attn:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        attention = sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    tracing = contextlib.nullcontext()
    if args.tracing:
        tracing = torch.profiler.profile(record_shapes=True)
    with tracing as profiler:
        result = sd3.generate(
            prompts, [args.uncond_prompt] * len(prompts), height=args.height, width=args.width, steps=steps, cfg=cfg,
            shift=args.time_shift, seed=seed, num_images=args.num_images, batch_size=args.batch_size,
            slg=v.slg if args.use_slg else None, sampler_name=args.sampler, latents=latents,
            on_step=Progress(args.quiet), attention_backend=attention,
        )
    if args.tracing:
        profiler.export_chrome_trace("sd3-trace.json")

    if args.save_latents:
        from safetensors.torch import save_file

        save_file({"latents": result.latents.contiguous()}, args.save_latents)
    out = Path(args.final_image)
    for k, (image, image_seed, prompt) in enumerate(zip(result.images, result.seeds, result.prompts)):
        path = out if len(result.images) == 1 else out.with_name(f"{out.stem}-{k}{out.suffix}")
        save_image(image, path, dict(
            prompt=prompt, negative_prompt=args.uncond_prompt, steps=result.steps, sampler=args.sampler,
            cfg_scale=cfg, seed=image_seed, width=args.width, height=args.height, which=args.which,
            time_shift=args.time_shift, reference=reference.name, use_slg=args.use_slg,
        ))
    total_steps = result.steps * -(-len(result.images) // args.batch_size)
    if not args.quiet:
        print(
            f"{len(result.images)} image(s), {total_steps} steps in {result.denoise_seconds:.2f}s "
            f"({total_steps / max(result.denoise_seconds, 1e-9):.2f} it/s); saved {out}",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    try:
        run(args)
    except SD3Error as error:
        if args.verbose:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
