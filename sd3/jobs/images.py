"""Writing an image so that a crash never leaves a half-written file under its real name.

The bytes go to a temporary name in the same folder, are flushed to disk, and only then renamed
(`os.replace` is atomic on POSIX and Windows). A PNG carries its settings twice: an
AUTOMATIC1111-style `parameters` text chunk, which image viewers and other tools read, and the same
as JSON in an `sd3` chunk; a JPEG carries the text as its comment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sd3.checkpoint import sha256_file
from sd3.errors import ConfigurationError

JPEG = (".jpg", ".jpeg")


def check_image_path(path: Path) -> None:
    """Raise before any compute unless `path` names a writable image file of a format Pillow writes."""
    if path.is_dir():
        raise ConfigurationError(f"`final_image` {path} is a directory; give a file name such as {path / 'out.png'}")
    known = Image.registered_extensions()
    if path.suffix.lower() not in known or known[path.suffix.lower()] not in Image.SAVE:
        raise ConfigurationError(f"`final_image` {path}: unknown image format '{path.suffix}'; use .png or .jpg")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigurationError(f"`final_image` {path}: the folder {folder} does not exist or is not writable")


def a1111_text(parameters: dict) -> str:
    """The AUTOMATIC1111 `parameters` text of an image: A1111's own words for our setting names."""
    text = (
        f"{parameters['prompt']}\nNegative prompt: {parameters['negative_prompt']}\n"
        f"Steps: {parameters['steps']}, Sampler: {parameters['sampler']}, CFG scale: {parameters['cfg']}, "
        f"Seed: {parameters['seed']}, Size: {parameters['width']}x{parameters['height']}, "
        f"Model: {parameters['which']}, Shift: {parameters['shift']}, Reference: {parameters['reference']}"
    )
    if "batch_index" in parameters:  # ComfyUI's batch noise: row k of the seed's stream
        text += f", Batch index: {parameters['batch_index']}"
    if parameters.get("scheduler"):  # A1111's "Schedule type"
        text += f", Schedule type: {parameters['scheduler']}"
    if "strength" in parameters:  # image to image, in A1111's own words
        text += f", Denoising strength: {parameters['strength']}, Init image: {parameters['init_image']}"
        if parameters.get("mask"):
            text += f", Mask: {parameters['mask']}"
    if parameters.get("loras"):  # A1111 writes LoRAs as <lora:name:weight> tags and their hashes
        text += ", Lora hashes: \"" + ", ".join(f"{l['file']}: {l['sha256'][:12]}" for l in parameters["loras"]) + "\""
        text += ", Loras: " + " ".join(f"<lora:{Path(l['file']).stem}:{l['scale']}>" for l in parameters["loras"])
    for k, net in enumerate(parameters.get("controlnets") or []):  # the A1111 ControlNet extension's "ControlNet N" entries
        text += (f", ControlNet {k}: \"Model: {net['file']} [{net['sha256'][:8]}], Image: {net['image']}, "
                 f"Weight: {net['scale']}, Guidance Start: {net['start']}, Guidance End: {net['end']}\"")
    return text


def recorded_seed(request, batch_noise: bool) -> dict:
    """How an image records its noise: its `seed`, or under ComfyUI's batch noise (`Reference.noise`
    "batch") its stream's seed and its row as `batch_index`, as ComfyUI names them."""
    if batch_noise:
        return {"seed": request.stream[0], "batch_index": request.stream[1]}
    return {"seed": request.seed}


def image_parameters(request, settings: dict, batch_noise: bool = False) -> dict:
    """What an image file records: its request's prompt, negative prompt and seed (an `ImageRequest`
    or `ImageResult`), and `settings`: the image's own (`GenerationOptions.describe`'s names: height,
    width, steps, cfg, shift, sampler, slg, the names the manifest uses) with the run's (`which`,
    `reference`, `loras`; `strength`, `init_image`, `mask` for image to image); the seed as
    `recorded_seed` writes it."""
    return {"prompt": request.prompt, "negative_prompt": request.negative_prompt, **recorded_seed(request, batch_noise),
            **{k: v for k, v in settings.items() if k != "loras" or v}}


def save_image(image: Image.Image, path: Path, parameters: dict) -> str:
    """Write `image` to `path` atomically with its settings; returns the file's sha256 (hex)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = a1111_text(parameters)
    try:
        with open(temporary, "wb") as file:
            if path.suffix.lower() in JPEG:
                image.save(file, format="JPEG", quality=95, comment=text.encode("utf-8"))
            else:
                info = PngInfo()
                info.add_text("parameters", text)
                info.add_text("sd3", json.dumps(parameters))
                image.save(file, format=Image.registered_extensions()[path.suffix.lower()], pnginfo=info)
            file.flush()
            os.fsync(file.fileno())
        digest = sha256_file(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return digest

