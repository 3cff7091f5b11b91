"""The command's ControlNet flags: `--controlnet PATH[:SCALE]` (repeatable) with one `--control-image`
each, `--control-start` / `--control-end` for all of them, `--control-mask` for an inpainting net, and the
control-map preprocessing
`--canny LOW,HIGH` / `--blur RADIUS` (sampling/control_maps.py), applied to every control image.
Everything is checked, and every image read, before any model is downloaded or loaded."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from sd3.checkpoint import sha256_file
from sd3.errors import ConfigurationError
from sd3.sampling import img2img
from sd3.sampling.control import ControlInput, apply_stability_settings, stability_layout
from sd3.sampling.control_maps import blur, canny


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--controlnet", action="append", default=[], metavar="PATH[:SCALE]",
                   help="a ControlNet .safetensors (Stability's SD3.5 blur/canny/depth, or diffusers-format SD3); "
                        "repeat for several, summed")
    p.add_argument("--control-image", action="append", default=[], metavar="PATH",
                   help="the control map for each --controlnet, in order")
    p.add_argument("--control-mask", metavar="PATH", help="for an inpainting ControlNet: white marks what to repaint "
                                                          "in its --control-image")
    p.add_argument("--control-start", type=float, default=0.0, help="fraction of the steps where the ControlNets start")
    p.add_argument("--control-end", type=float, default=1.0, help="fraction of the steps where they stop")
    p.add_argument("--canny", metavar="LOW,HIGH", help="preprocess every --control-image into Canny edges (OpenCV)")
    p.add_argument("--blur", type=float, metavar="RADIUS", help="preprocess every --control-image with a Gaussian blur")


def inputs(args) -> list[ControlInput]:
    """The ControlInputs the flags ask for, their images read and preprocessed."""
    extra = [flag for flag, given in (("--control-image", args.control_image), ("--control-mask", args.control_mask),
                                      ("--canny", args.canny),
                                      ("--blur", args.blur is not None)) if given]
    if not args.controlnet:
        if extra:
            raise ConfigurationError(f"{extra[0]} needs --controlnet")
        return []
    if len(args.control_image) != len(args.controlnet):
        raise ConfigurationError(f"give one --control-image per --controlnet: got {len(args.control_image)} "
                                 f"for {len(args.controlnet)}")
    if not 0 <= args.control_start < args.control_end <= 1:
        raise ConfigurationError(f"--control-start must be below --control-end, both in [0, 1], got "
                                 f"{args.control_start} and {args.control_end}")
    if args.canny and args.blur is not None:
        raise ConfigurationError("--canny and --blur are two preprocessings: give one")
    out = []
    for net, image_path in zip(args.controlnet, args.control_image):
        path, scale = parse_path_scale(net, "--controlnet")
        stability_layout(path)  # an SD3 ControlNet at all: refused by name otherwise
        image = img2img.open_image(image_path, "control_image")
        if args.canny:
            low, _, high = args.canny.partition(",")
            try:
                image = canny(image, float(low), float(high))
            except ValueError:
                raise ConfigurationError(f"--canny takes LOW,HIGH thresholds (numbers, LOW below HIGH), got {args.canny!r}") from None
        elif args.blur is not None:
            image = blur(image, args.blur)
        out.append(ControlInput(path, image, scale, args.control_start, args.control_end, args.control_mask))
    return out


def parse_path_scale(value: str, flag: str = "--lora") -> tuple[Path, float]:
    """`PATH[:SCALE]` (`--lora`, `--controlnet`) -> (path, scale); a file whose own name holds a colon is taken whole."""
    path, _, scale = value.rpartition(":")
    if not path or Path(value).is_file():
        path, scale = value, "1"
    try:
        number = float(scale)
    except ValueError:
        raise ConfigurationError(f"{flag} takes PATH[:SCALE] with a number for SCALE, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigurationError(f"{flag}'s SCALE must be a finite number, got {scale!r}")
    if not Path(path).expanduser().is_file():
        raise ConfigurationError(f"{flag} file not found: {path}")
    return Path(path).expanduser(), number


def apply_defaults(controls: list[ControlInput], settings: dict) -> None:
    """With one of Stability's nets, the steps, cfg and shift not given become Stability's ControlNet settings."""
    apply_stability_settings(any(stability_layout(c.model) for c in controls), settings)


def records(args, controls: list[ControlInput]) -> list[dict]:
    """What each image records of its ControlNets: files and control images (names and sha256, so that a
    resumed job notices a changed file), the mask, scale, window and preprocessing."""
    preprocessing = f"canny {args.canny}" if args.canny else f"blur {args.blur}" if args.blur is not None else None
    out = []
    for c, image in zip(controls, args.control_image):
        record = {"file": Path(c.model).name, "sha256": sha256_file(Path(c.model)), "image": Path(image).name,
                  "image_sha256": sha256_file(Path(image)), "scale": c.scale, "start": c.start, "end": c.end,
                  "preprocessing": preprocessing}
        if args.control_mask:
            record.update(mask=Path(args.control_mask).name, mask_sha256=sha256_file(Path(args.control_mask)))
        out.append(record)
    return out
