"""`sd3 generate`: text to image from the command line, with the flags of Candle's stable-diffusion-3 example.

    sd3 generate --which 3.5-medium --prompt "a photo of a cat" --final-image cat.png
    python scripts/generate.py ...   # the same, as a file beside Candle's main.rs

Mirrors huggingface/candle candle-examples/examples/stable-diffusion-3/main.rs. Files come from the
Hugging Face Hub (gated: accept the licence, set HF_TOKEN) unless given locally with --checkpoint,
--clip-l, --clip-g, --t5xxl, --vae and the tokenizer flags. Every error is one line on stderr and a
non-zero exit (--verbose shows the traceback). The library's errors name its parameters
(`height`, `files["clip_g"]`); `to_flags` turns them into this command's flags.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import secrets
import sys
from dataclasses import replace
from pathlib import Path

import torch

from sd3.checkpoint import open_checkpoint
from sd3.cli import control_flags, many_images
from sd3.cli.control_flags import parse_path_scale
from sd3.errors import ConfigurationError, DeviceError, SD3Error
from sd3.jobs.distributed import Rank
from sd3.jobs.images import check_image_path, image_parameters, save_image
from sd3.lora import load_lora
from sd3.sampling import img2img
from sd3.sampling import checks
from sd3.sampling.checks import DECODERS, DEFAULT_STRENGTH
from sd3.sampling.previews import KINDS, Preview
from sd3.sampling import FILE_NAMES, REFERENCES, SAMPLERS, SCHEDULES, VARIANTS, GenerationOptions, Reference, StableDiffusion3

AUTO_BATCH_CAP = 8

# The library's parameter expressions (as its messages write them, in backticks) -> this command's flags.
FLAGS = {
    "height": "--height", "width": "--width", "steps": "--num-inference-steps", "cfg": "--cfg-scale",
    "shift": "--time-shift", "num_images": "--num-images", "batch_size": "--batch-size",
    "batch_size=1": "--batch-size 1", "sampler_name": "--sampler", "latents": "--latents",
    "reference": "--reference", "which": "--which", "scheduler": "--scheduler", "negative_zero": "--negative-zero", "slg=True": "--use-slg", "slg": "--use-slg", "prompts": "--prompt",
    "negative_prompts": "--uncond-prompt", "dtype": "--dtype", "tile_size": "--tile-size", "t5_length": "--t5-max-length", "scale": "--lora PATH:SCALE",
    "control_image": "--control-image", "controlnet": "--controlnet", "start": "--control-start", "end": "--control-end",
    "canny": "--canny", "blur": "--blur", "control": "--controlnet", "control_mask": "--control-mask",
    "prompts_file": "--prompts-file", "chunk_size": "--chunk-size", "output_dir": "--output-dir",
    "final_image": "--final-image", "overwrite=True": "--overwrite", "init_image": "--init-image",
    "strength": "--strength", "mask": "--mask", "preview": "--preview", "preview_interval": "--preview-interval",
    "preview_path": "--preview-path", "decoder": "--vae-decoder", 'decoder="taesd3"': "--vae-decoder taesd3",
    "kind": "--preview", "every": "--preview-interval", "path": "--preview-path",
    "strict=False": "--lora-ignore-unmatched", 'dtype="bfloat16"': "--dtype bfloat16",
    'dtype="float32"': "--dtype float32", 'device="cpu"': "--cpu", 'files["t5xxl"]=None': "--no-t5",
    "files": "file flags", **{f'files["{name}"]': "--" + name.replace("_", "-") for name in FILE_NAMES},
}


def to_flags(message: str) -> str:
    """A library message in this command's terms: each `parameter` becomes its flag."""
    return re.sub(r"`([^`]+)`", lambda m: FLAGS.get(m.group(1), m.group(1)), message)

CANDLE_PROMPT = (
    "A cute rusty robot holding a candle torch in its hand, with glowing neon text \"LETS GO RUSTY\" "
    "displayed on its chest, bright background, high quality, 4k"
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sd3 generate", description=__doc__.split("\n")[0])
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
    p.add_argument("--time-shift", type=float, help="default: the variant's (3.0)")
    p.add_argument("--use-slg", action="store_true", help="skip-layer guidance (3.5-medium only)")
    p.add_argument("--seed", type=int, help="default: a random seed, printed and stored in the image")
    # Ours.
    p.add_argument("--final-image", default="out.png", help="PNG unless the extension says JPEG")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt (seeds seed, seed+1, ...)")
    p.add_argument("--batch-size", default="1",
                   help=f"images denoised together, or 'auto': the largest the memory check admits (at most {AUTO_BATCH_CAP})")
    p.add_argument("--prompts-file", help="one prompt per line, or JSONL lines {\"prompt\": ..., \"seed\": ..., "
                   "\"negative_prompt\": ..., \"cfg\": ...}; each image is saved as soon as it is made")
    p.add_argument("--output-dir", help="write 00000.png, 00001.png, ... and manifest.jsonl there; running the "
                   "same command again resumes; under torchrun each process takes its share")
    p.add_argument("--overwrite", action="store_true", help="with --output-dir: remake images whose settings changed")
    p.add_argument("--chunk-size", type=int, help="prompts encoded per chunk (default: one batch when models stay "
                   "loaded, else grown until loading is a tenth of the time)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--reference", choices=REFERENCES, default="default", help="whose behaviour to mirror (README)")
    p.add_argument("--t5-max-length", type=int, help="override the reference's T5 length")
    p.add_argument("--no-t5", action="store_true", help="zeros instead of T5 (saves ~10 GB)")
    p.add_argument("--sampler", choices=SAMPLERS, default="euler")
    p.add_argument("--scheduler", choices=SCHEDULES, help="the sigma schedule by name instead of the reference's: "
                   "candle, diffusers, stability, or ComfyUI's (simple, normal, sgm_uniform, karras, beta, ...)")
    p.add_argument("--negative-zero", action="store_true", help="zero the negative conditioning, as ComfyUI's "
                   "ConditioningZeroOut (the --uncond-prompt still sets its length)")
    p.add_argument("--tile-size", type=int, help="decode in tiles of this many latent pixels (VAE memory at large sizes)")
    p.add_argument("--compile", action="store_true", help="torch.compile the MMDiT (slow first step)")
    p.add_argument("--init-image", help="image to image: start from this image, resized to --height x --width as "
                   "diffusers' image processor resizes it (Lanczos)")
    p.add_argument("--strength", "--denoise", type=float, help="with --init-image: how much of the schedule runs, in "
                   "(0, 1]; 1 starts from pure noise (default 0.6; --denoise is Stability's name)")
    p.add_argument("--mask", help="with --init-image: inpaint, repainting the white area (same size as the image)")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="apply a LoRA (diffusers/PEFT, SimpleTuner, kohya, OneTrainer, LyCORIS or original names), scale 1 "
                   "unless given; repeatable")
    control_flags.add_arguments(p)
    p.add_argument("--lora-ignore-unmatched", action="store_true",
                   help="apply the LoRA keys that match and warn about the rest (default: refuse the file)")
    p.add_argument("--latents", help="initial noise: a .safetensors file with key 'latents'")
    p.add_argument("--save-latents", help="write the final latents (before decoding) to this .safetensors file")
    p.add_argument("--preview", choices=KINDS, help="show each step's predicted image (x0): proj (a linear map, "
                   "no model), taesd (TAESD3, needs --taesd) or vae (the full VAE), as stable-diffusion.cpp's flag")
    p.add_argument("--preview-path", help="with --preview (default preview.png): a file rewritten at every preview "
                   "(preview-K.png for image K > 0), or a folder (ending in /) of numbered frames")
    p.add_argument("--preview-interval", type=int, help="with --preview: every N steps (default 1)")
    p.add_argument("--taesd", help="a TAESD3 .safetensors file (madebyollin/taesd3, either layout): for "
                   "--preview taesd and --vae-decoder taesd3")
    p.add_argument("--vae-decoder", choices=list(DECODERS), default="vae", help="what decodes the final images: the "
                   "VAE, or TAESD3 (needs --taesd; far faster, less detail)")
    for flag in ("--checkpoint", "--clip-l", "--clip-g", "--t5xxl", "--vae"):
        p.add_argument(flag, help="local .safetensors file instead of the Hub" + (
            " (bf16, fp16 or fp8; a .gguf MMDiT, with --vae)" if flag == "--checkpoint" else
            " (bf16, fp16 or fp8, or a .gguf T5 encoder)" if flag == "--t5xxl" else ""))
    for flag in ("--clip-l-tokenizer", "--clip-g-tokenizer", "--t5-tokenizer"):
        p.add_argument(flag, help="local tokenizer.json instead of the Hub")
    p.add_argument("--revision", help="Hub revision of the model repos")
    p.add_argument("--cache-dir", help="Hub cache directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    return p


def file_overrides(args) -> dict:
    """The `files` entries the flags give (the rest come from the Hub); --no-t5 sets t5xxl to None."""
    files = {name: getattr(args, name) for name in FILE_NAMES if getattr(args, name) is not None}
    if args.no_t5:
        files.update(t5xxl=None, t5_tokenizer=None)
    return files


def read_latents(path: str) -> torch.Tensor:
    with open_checkpoint(path) as tensors:
        if "latents" not in tensors:
            raise ConfigurationError(f"--latents {path} has no tensor named 'latents' (found: {tensors.keys()[:5]})")
        return tensors.tensor("latents").clone()


def run(args) -> None:
    device = torch.device("cpu") if args.cpu else None
    if args.use_flash_attn and (args.cpu or not torch.cuda.is_available()):
        raise DeviceError("--use-flash-attn needs a CUDA device (the flash SDPA backend does not run on the CPU)")
    reference = Reference.named(args.reference)
    if args.t5_max_length is not None:
        reference = replace(reference, t5_length=args.t5_max_length)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    auto_batch = args.batch_size == "auto"
    settings = dict(
        height=args.height, width=args.width, steps=args.num_inference_steps, cfg=args.cfg_scale, shift=args.time_shift,
        seed=seed, num_images=args.num_images, batch_size=1 if auto_batch else parse_batch_size(args.batch_size),
        slg=args.use_slg, tile_size=args.tile_size, scheduler=args.scheduler, negative_zero=args.negative_zero,
    )
    # Every setting, prompt line and output path is checked before any file is downloaded or read.
    controls = control_flags.inputs(args)  # ControlNet headers and control images, read now
    control_flags.apply_defaults(controls, settings)
    options = GenerationOptions.resolve(VARIANTS[args.which], reference, sampler=args.sampler, sigmas=None, **settings)
    many = args.prompts_file is not None or args.output_dir is not None
    edit = img2img.check_inputs(args.init_image, args.strength, args.mask)
    loras = [(load_lora(path), scale) for path, scale in map(parse_path_scale, args.lora)]  # read and checked now
    preview = previews(args)
    checks.check_callback(preview, args.taesd)
    if many and args.init_image:
        raise ConfigurationError("--init-image and --mask work with one --prompt, not with --prompts-file or --output-dir")
    if many:
        job = many_images.prepare(args, reference, settings, loras, controls)
    else:
        check_image_path(Path(args.final_image))
    latents = read_latents(args.latents) if args.latents else None
    logging.getLogger(__name__).info("seed %d", seed)

    rank = Rank.from_environment()
    rank.start()
    try:
        # One call: each stage's models are freed before the next loads (Candle's main.rs). Many
        # prompts: models stay loaded between chunks when they fit together.
        sd3 = StableDiffusion3.from_variant(
            args.which, files=file_overrides(args), device=device or rank.device(), dtype=args.dtype,
            keep="auto" if many else "stage", reference=reference, revision=args.revision, cache_dir=args.cache_dir,
            compile=args.compile, decoder=args.vae_decoder,
        )
        for lora, scale in loras:
            sd3.add_lora(lora, scale, strict=not args.lora_ignore_unmatched)
        if auto_batch:
            settings["batch_size"] = sd3.auto_batch_size(options, cap=AUTO_BATCH_CAP)
            logging.getLogger(__name__).info("batch size %d", settings["batch_size"])
        attention = None
        if args.use_flash_attn:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            attention = sdpa_kernel(SDPBackend.FLASH_ATTENTION)
        tracing = torch.profiler.profile(record_shapes=True) if args.tracing else contextlib.nullcontext()
        with tracing as profiler, attention or contextlib.nullcontext():
            if many:
                many_images.run(args, sd3, job, settings, rank, preview, controls)
            else:
                one_call(args, sd3, settings, latents, edit, preview, controls)
        if args.tracing:
            profiler.export_chrome_trace("sd3-trace.json")
    finally:
        rank.stop()


def previews(args) -> Preview | None:
    """--preview's callback, checked now; --preview-path and --preview-interval need --preview."""
    if args.preview is None:
        given = [flag for flag, value in (("--preview-path", args.preview_path),
                                          ("--preview-interval", args.preview_interval)) if value is not None]
        if given:
            raise ConfigurationError(f"{given[0]} needs --preview proj, taesd or vae")
        return None
    path = args.preview_path or "preview.png"
    logging.getLogger(__name__).info("previews (%s) in %s", args.preview, path)
    return Preview(args.preview, every=1 if args.preview_interval is None else args.preview_interval, path=path)


def parse_batch_size(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ConfigurationError(f"`batch_size` must be a positive integer or 'auto', got '{value}'")
    return int(value)


def one_call(args, sd3, settings, latents, edit, preview, controls=()) -> None:
    """One prompt: every image in one `generate()` call, saved when it returns (as Candle's main.rs)."""
    image, mask = edit
    result = sd3.generate(args.prompt, args.uncond_prompt, sampler_name=args.sampler, latents=latents,
                          quiet=args.quiet, init_image=image, strength=args.strength, mask=mask, on_step=preview,
                          control=controls, **settings)
    recorded = {**result.options.describe(), **many_images.run_settings(args, sd3, controls)}
    if image is not None:
        recorded.update(init_image=Path(args.init_image).name, mask=Path(args.mask).name if args.mask else None,
                        strength=DEFAULT_STRENGTH if args.strength is None else args.strength)
    if args.save_latents:
        from safetensors.torch import save_file

        save_file({"latents": result.latents.contiguous()}, args.save_latents)
    out = Path(args.final_image)
    for k, (picture, request) in enumerate(zip(result.images, result.requests)):
        path = out if len(result.images) == 1 else out.with_name(f"{out.stem}-{k}{out.suffix}")
        save_image(picture, path, image_parameters(request, recorded, sd3.reference.noise == "batch"))
    total_steps = result.steps * -(-len(result.images) // settings["batch_size"])
    seconds = result.timings["denoise"]
    if not args.quiet:
        print(f"{len(result.images)} image(s), {total_steps} steps in {seconds:.2f}s "
              f"({total_steps / max(seconds, 1e-9):.2f} it/s); saved "
              f"{out if len(result.images) == 1 else out.with_name(out.stem + '-*' + out.suffix)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    try:
        run(args)
    except SD3Error as error:
        if args.verbose:
            raise
        print(f"error: {to_flags(str(error))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
