"""The x0 trajectory of one generation as a filmstrip: what the model predicts at every step, with σ under it.

    python scripts/trajectory.py --which 3.5-medium --prompt "a photo of a cat" --num-inference-steps 12 \\
        --height 512 --width 512 --seed 0 --final-image trajectory.png
    python scripts/trajectory.py ... --compare cfg=1        # a second row at cfg 1, and their difference
    python scripts/trajectory.py ... --compare slg=on       # skip-layer guidance on (3.5-medium)

Takes `sd3 generate`'s flags for the files (--checkpoint, --taesd, ...), --which, --dtype,
--reference, --cpu, the prompt and negative prompt, the size, steps, cfg, shift, seed, sampler,
--use-slg, --preview proj|taesd|vae and --final-image (the strip; default trajectory.png); the
others (LoRAs, image to image, several images, preview files) are refused: it renders one image's steps. Each frame is the step's x0 = x − σ·v (rectified flow), decoded by the preview
kind (default `proj`, no model needed). With --compare, the third row is |A − B| per pixel, amplified 4x: where, and from
which step on, the two settings part ways.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sd3.cli import generate
from sd3.errors import ConfigurationError, SD3Error
from sd3.sampling import StableDiffusion3, checks
from sd3.sampling.previews import Preview, filmstrip

UNUSED = ("--lora", "--init-image", "--mask", "--strength", "--latents", "--save-latents", "--prompts-file",
          "--output-dir", "--tile-size", "--preview-path", "--preview-interval", "--compile", "--tracing")
COMPARABLE = {"cfg": float, "shift": float, "slg": {"on": True, "off": False}.__getitem__}


def parser():
    p = generate.parser()
    p.prog, p.description = "scripts/trajectory.py", __doc__.split("\n")[0]
    p.set_defaults(final_image="trajectory.png")  # the filmstrip's file
    p.add_argument("--compare", help="a second setting, rendered below the first: cfg=VALUE, shift=VALUE or slg=on/off")
    return p


def trajectory(pipe: StableDiffusion3, kind: str, **settings) -> tuple[list[Image.Image], list[float]]:
    """One generation's previews (image 0) and the σ each step started from."""
    preview = Preview(kind)  # the Preview itself: a taesd or vae one is lent its model by the pipeline
    pipe.generate(on_step=preview, quiet=True, **settings)
    return preview.frames[0], preview.sigmas[0]


def difference(a: Image.Image, b: Image.Image, gain: float = 4.0) -> Image.Image:
    """|a - b| per pixel and channel, times `gain`, clipped to 255."""
    delta = np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)) * gain
    return Image.fromarray(np.clip(delta, 0, 255).astype(np.uint8))


def parse_compare(value: str) -> tuple[str, object]:
    key, _, raw = value.partition("=")
    if key not in COMPARABLE or not raw:
        raise ConfigurationError(f"--compare takes cfg=VALUE, shift=VALUE or slg=on/off, got '{value}'")
    try:
        return key, COMPARABLE[key](raw)
    except (ValueError, KeyError):
        raise ConfigurationError(f"--compare {key} takes {'on or off' if key == 'slg' else 'a number'}, "
                                 f"got '{raw}'") from None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        unused = [flag for flag in UNUSED if getattr(args, flag.lstrip("-").replace("-", "_")) not in (None, [], False)]
        if unused or args.num_images != 1:
            raise ConfigurationError(f"scripts/trajectory.py does not use {(unused or ['--num-images'])[0]}: it "
                                     "renders one image's steps")
        compare = parse_compare(args.compare) if args.compare else None
        checks.check_callback(Preview(args.preview or "proj"), args.taesd)
        pipe = StableDiffusion3.from_variant(args.which, files=generate.file_overrides(args), dtype=args.dtype,
                                             reference=args.reference, device="cpu" if args.cpu else None, keep="all")
        settings = dict(prompts=args.prompt, negative_prompts=args.uncond_prompt, height=args.height,
                        width=args.width, steps=args.num_inference_steps, cfg=args.cfg_scale, shift=args.time_shift,
                        seed=args.seed or 0, slg=args.use_slg, sampler_name=args.sampler)
        frames, sigmas = trajectory(pipe, args.preview or "proj", **settings)
        rows, names = [frames], ["x0"]
        if compare:
            key, value = compare
            other, _ = trajectory(pipe, args.preview or "proj", **{**settings, key: value})
            rows += [other, [difference(a, b) for a, b in zip(frames, other)]]
            names = [_name(pipe, settings), args.compare, "|A - B| x4"]
        strip = filmstrip(rows, [f"sigma {s:.3f}" for s in sigmas], names=names)
        strip.save(Path(args.final_image))
    except SD3Error as error:
        print(f"error: {generate.to_flags(str(error))}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{len(sigmas)} steps, {len(rows)} row(s); saved {args.final_image}", file=sys.stderr)
    return 0


def _name(pipe: StableDiffusion3, settings: dict) -> str:
    """The first row's setting, as the options resolve it (the variant's cfg when none was given)."""
    options = pipe.options(**{k: v for k, v in settings.items() if k not in ("prompts", "negative_prompts")})
    return f"cfg={options.cfg:g}, slg={'on' if options.slg else 'off'}"


if __name__ == "__main__":
    sys.exit(main())
