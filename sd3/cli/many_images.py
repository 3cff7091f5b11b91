"""`sd3 generate --prompts-file` and `--output-dir`: many images, each saved as soon as it is made.

With `--output-dir DIR` the images are `DIR/00000.png`, `DIR/00001.png`, ... (the global index of
their prompt line, times `--num-images`, plus the image's number) beside `DIR/manifest.jsonl`;
running the same command again resumes, and under torchrun each process takes its share
(sd3/jobs/). Without it they are `--final-image`'s name with `-K` added, as for one prompt.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from sd3.cli import control_flags
from sd3.errors import ConfigurationError
from sd3.jobs.images import check_image_path, image_parameters, save_image
from sd3.jobs.manifest import check_output_dir
from sd3.jobs.prompts import read_prompt_file
from sd3.jobs.run import Job
from sd3.sampling import VARIANTS, GenerationOptions, ImageRequest, StreamStats, image_requests


def requests(args, seed: int) -> list[ImageRequest]:
    """The images the prompt lines ask for, `--num-images` each (sampling/requests.py: the seed rule)."""
    lines = read_prompt_file(args.prompts_file) if args.prompts_file else [args.prompt]
    return image_requests(lines, args.uncond_prompt, seed=seed, num_images=args.num_images)


def run_settings(args, pipe, controls=()) -> dict:
    """What every image of this command records besides its own settings (`decoder` and `controlnets` only
    when used, so that manifests written before they existed still match)."""
    recorded = {"which": args.which, "reference": pipe.reference.name, "loras": lora_records(pipe.loras)}
    if controls:
        recorded["controlnets"] = control_flags.records(args, controls)
    return {**recorded, "decoder": args.vae_decoder} if args.vae_decoder != "vae" else recorded


def lora_records(loras) -> list[dict]:
    """What an image records of each LoRA (entries `(lora, scale, ...)`): file name, sha256, scale."""
    return [{"file": entry[0].path.name, "sha256": entry[0].sha256, "scale": entry[1]} for entry in loras]


def prepare(args, reference, settings: dict, loras=(), controls=()) -> Job | list[ImageRequest]:
    """Check the prompt list, every line's settings and the output path; no model is touched."""
    if args.latents or args.save_latents:
        raise ConfigurationError("--latents and --save-latents work with one --prompt, not with --prompts-file or --output-dir")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ConfigurationError(f"`chunk_size` must be at least 1, got {args.chunk_size}")
    prompts = requests(args, settings["seed"])
    variant = VARIANTS[args.which]
    for request in prompts:  # each line's own settings, checked as the run will use them
        if request.settings:
            GenerationOptions.resolve(variant, reference, sampler=args.sampler, sigmas=None,
                                      **{**settings, **request.settings})
    if args.output_dir is None:
        check_image_path(Path(args.final_image))
        return prompts
    check_output_dir(Path(args.output_dir))
    recorded = {"which": args.which, "dtype": args.dtype or "default", "reference": reference.name,
                "t5_length": None if args.no_t5 else reference.t5_length, "loras": lora_records(loras)}
    if args.vae_decoder != "vae":
        recorded["decoder"] = args.vae_decoder
    if controls:
        recorded["controlnets"] = control_flags.records(args, controls)
    return Job(Path(args.output_dir), prompts, settings=recorded, generation=_generation(args, settings), control=list(controls),
               batch_size=settings["batch_size"], chunk_size=args.chunk_size, overwrite=args.overwrite)


def _generation(args, settings: dict) -> dict:
    keys = ("height", "width", "steps", "cfg", "shift", "slg", "tile_size", "scheduler", "negative_zero")
    return {**{k: settings[k] for k in keys}, "sampler_name": args.sampler}


def run(args, pipe, job, settings: dict, rank, preview=None, controls=()) -> None:
    if isinstance(job, Job):
        job = replace(job, batch_size=settings["batch_size"], rank=rank, on_step=preview)
        summary = job.run(pipe, quiet=args.quiet)
        if not args.quiet:
            stats = summary.stats
            print(f"rank {rank.rank}/{rank.world}: {summary.written} image(s) written, {summary.skipped} already done, "
                  f"in {summary.seconds:.1f}s (loading {stats.load_share:.0%} of the work); "
                  f"{job.folder / 'manifest.jsonl'}", file=sys.stderr)
        return
    out, stats = Path(args.final_image), StreamStats()
    prompts = job
    stream = pipe.generate_many(prompts, batch_size=settings["batch_size"], chunk_size=args.chunk_size, stats=stats,
                                quiet=args.quiet, on_step=preview, control=list(controls), **_generation(args, settings))
    for result in stream:
        path = out if len(prompts) == 1 else out.with_name(f"{out.stem}-{result.index}{out.suffix}")
        save_image(result.image, path, image_parameters(result, {**result.settings, **run_settings(args, pipe, controls)},
                                                        pipe.reference.noise == "batch"))
    if not args.quiet:
        print(f"{stats.images} image(s) in {stats.chunks} chunk(s), loading {stats.load_share:.0%} of the work; "
              f"saved {out.with_name(out.stem + '-*' + out.suffix)}", file=sys.stderr)
