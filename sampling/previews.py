"""Step previews: what the model predicts (x0) at each step, as pictures, while it samples.

    preview = Preview("proj", every=1)                       # frames kept as PIL images
    pipe.generate("a cat", on_step=preview)
    preview.frames[0]                                         # image 0's frames, one per step

    pipe.generate("a cat", on_step=Preview("taesd", path="preview.png"))   # rewritten every step
    pipe.generate_many(prompts, on_step=Preview("proj", path="frames/"))   # frames/00003-007.png ...

Three ways to turn the predicted clean latents x0 (b, 16, h, w) into RGB, as stable-diffusion.cpp's
`--preview proj|tae|vae` and ComfyUI's `--preview-method latent2rgb|taesd`:

| kind | how | size | needs |
|---|---|---|---|
| `proj` | a fixed 16 -> 3 linear map of each latent pixel | h x w | nothing |
| `taesd` | TAESD3, the tiny autoencoder (vae/taesd.py) | 8h x 8w | the pipeline's `files["taesd"]` |
| `vae` | the full VAE | 8h x 8w | the VAE, loaded beside the MMDiT |

`proj` uses the latent-to-RGB factors Stability publishes with its reference code (sd3.5
`sd3_impls.py`, `SD3LatentFormat.decode_latent_to_preview`; ComfyUI's `latent_formats.py` has a
slightly refitted set with a bias): RGB = x0 · F, F of shape (16, 3), then [-1, 1] -> [0, 255]
(rounded, as every image here; Stability's preview truncates).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from sd3.errors import ConfigurationError
from sd3.sampling.samplers import Step
from sd3.vae import decode_latents, to_pil

KINDS = ("proj", "taesd", "vae")

# Stability's sd3.5 sd3_impls.py, SD3LatentFormat.decode_latent_to_preview: rows are latent channels, columns R, G, B.
LATENT_RGB_FACTORS = (
    (-0.0645, 0.0177, 0.1052), (0.0028, 0.0312, 0.0650), (0.1848, 0.0762, 0.0360), (0.0944, 0.0360, 0.0889),
    (0.0897, 0.0506, -0.0364), (-0.0020, 0.1203, 0.0284), (0.0855, 0.0118, 0.0283), (-0.0539, 0.0658, 0.1047),
    (-0.0057, 0.0116, 0.0700), (-0.0412, 0.0281, -0.0039), (0.1106, 0.1171, 0.1220), (-0.0248, 0.0682, -0.0481),
    (0.0815, 0.0846, 0.1207), (-0.0120, -0.0055, -0.0867), (-0.0749, -0.0634, -0.0456), (-0.1418, -0.1457, -0.1259),
)


def project(x0: torch.Tensor) -> torch.Tensor:
    """Model-space latents (b, 16, h, w) -> approximate images (b, 3, h, w) in about [-1, 1]."""
    factors = torch.tensor(LATENT_RGB_FACTORS, dtype=torch.float32, device=x0.device)
    return torch.einsum("bchw,cr->brhw", x0.float(), factors)


class Preview:
    """A ready-made `on_step` callback: every `every` steps (and after the last), each image's x0 as a picture.

    Args:
        kind: "proj" (frames of the latent's size, 1/8 of the image's), "taesd" or "vae" (the
            image's size): the table in this module's docstring.
        every: the preview interval, in steps.
        path: None keeps the frames in `frames` (image index -> PIL images, one per preview, with
            the σ of each in `sigmas`; both grow over calls until cleared); a file name
            (`preview.png`) is rewritten at every preview: image 0's, and beside it one per other
            image (`preview-3.png`); a folder (a name ending in "/", or an existing folder) gets
            numbered frames `{index:05d}-{step:03d}.png`.

    Raises:
        ConfigurationError: an unknown kind, an interval below 1, a file name of no image format
            Pillow writes, or a file in a folder that does not exist.
    """

    def __init__(self, kind: str = "proj", *, every: int = 1, path: str | os.PathLike | None = None) -> None:
        if kind not in KINDS:
            raise ConfigurationError(f"unknown preview `kind` '{kind}'; choose one of {', '.join(KINDS)}")
        if every < 1:
            raise ConfigurationError(f"`every` must be at least 1, got {every}")
        self.kind, self.every = kind, every
        self.folder, self.file = _where(path)
        self.frames: dict[int, list[Image.Image]] = {}
        self.sigmas: dict[int, list[float]] = {}
        self._decoder: Callable[[torch.Tensor], torch.Tensor] | None = project if kind == "proj" else None

    @property
    def model(self) -> str | None:
        """The model the pipeline lends this preview while it denoises ("taesd", "vae"), if any."""
        return None if self.kind == "proj" else self.kind

    @contextlib.contextmanager
    def lent(self, decoder: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Decode with `decoder` (model-space latents (b, 16, h, w) -> images in [-1, 1]) inside the
        block; the pipeline lends it, and takes it back after, so the preview keeps no model alive."""
        self._decoder = decoder
        try:
            yield
        finally:
            self._decoder = None

    def __call__(self, step: Step) -> None:
        if step.step % self.every and step.step != step.steps:
            return
        if self._decoder is None:
            raise ConfigurationError(f"a {self.kind} preview decodes with a model: pass it to a pipeline's "
                                     "generate(), generate_many() or denoise(), which lend it")
        with torch.no_grad():
            images = to_pil(self._decoder(step.x0))
        for index, image in zip(step.indices, images):
            if self.folder is not None:
                self.folder.mkdir(parents=True, exist_ok=True)
                _save(image, self.folder / f"{index:05d}-{step.step:03d}.png")
            elif self.file is not None:
                _save(image, self.file if index == 0 else self.file.with_name(f"{self.file.stem}-{index}{self.file.suffix}"))
            else:
                self.frames.setdefault(index, []).append(image)
                self.sigmas.setdefault(index, []).append(step.sigma)


def _where(path: str | os.PathLike | None) -> tuple[Path | None, Path | None]:
    """(folder, file) from a `preview_path`: a folder ends in "/" or exists, a file has an image suffix."""
    if path is None:
        return None, None
    raw, path = str(path), Path(path)
    if raw.endswith(("/", os.sep)) or path.is_dir():
        return path, None
    formats = Image.registered_extensions()
    if formats.get(path.suffix.lower()) not in Image.SAVE:
        raise ConfigurationError(f"`path` {path}: not an image file name (.png, .jpg, ...) nor a folder ending in /")
    if not path.parent.is_dir():
        raise ConfigurationError(f"`path` {path}: the folder {path.parent} does not exist")
    return None, path


def filmstrip(rows: list[list[Image.Image]], labels: list[str], *, height: int = 128,
              names: list[str] | None = None) -> Image.Image:
    """Frames side by side, one row per run, each frame scaled to `height` pixels (nearest
    neighbour, so a `proj` preview's latent pixels stay visible), `labels` (one per column, e.g.
    "sigma 0.750": the default font has no Greek) under the last row and `names` (one per row) on the left."""
    width = max(round(frame.width * height / frame.height) for row in rows for frame in row)
    margin, caption = (96 if names else 0), 18
    sheet = Image.new("RGB", (margin + width * len(labels), height * len(rows) + caption), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default(size=13)
    for r, row in enumerate(rows):
        for c, frame in enumerate(row):
            sheet.paste(frame.resize((width, height), Image.NEAREST), (margin + c * width, r * height))
        if names:
            draw.text((4, r * height + height // 2 - 6), names[r], fill="black", font=font)
    for c, label in enumerate(labels):
        draw.text((margin + c * width + 4, height * len(rows) + 2), label, fill="black", font=font)
    return sheet


def _save(image: Image.Image, path: Path) -> None:
    """Write atomically, so a viewer watching the file never reads half a frame."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(temporary, format=Image.registered_extensions()[path.suffix.lower()])
    os.replace(temporary, path)


@contextlib.contextmanager
def lend(lifecycle, on_step, activation: int) -> Iterator[None]:
    """Lend a model-decoding `Preview` its model (TAESD3 or the VAE) through the pipeline's `lifecycle`
    (sampling/lifecycle.py), which checks `activation` bytes, loads, and keeps or frees it; else nothing."""
    model = on_step.model if isinstance(on_step, Preview) else None
    if model is None:
        yield
        return
    with lifecycle.hold(f"preview_{model}", activation) as models:
        decoder = models[model]
        with on_step.lent(decoder.decode if model == "taesd" else lambda x0: decode_latents(decoder, x0)):
            yield
