"""Draw docs/images/controlnet-preparation.png: one control map after each reference's pixel transform.

    python scripts/plot_control_preparation.py [--image photo.png] [--out docs/images/controlnet-preparation.png]

Without --image it draws a scene of its own (shapes on a gradient). Columns: the canny edges
(sampling/control_maps.py, OpenCV), the blurred image and a depth-like map (the gradient);
rows: the values the VAE encoder receives under `--reference stability` (Stability's per-type
transform) and `--reference diffusers` (2x − 1 for every type), as sampling/control.py computes
them. The colour scale of each panel spans its own values, printed above it: Stability's canny maps
reach 128, where the encoder saw [−1, 1] in training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sd3.mmdit.controlnet import ControlNetConfig
from sd3.sampling.control import ControlInput, pixels
from sd3.sampling.control_maps import blur, canny

SIZE = 256


def scene() -> Image.Image:
    """A photo stand-in: a vertical gradient (near is bright) with a few shapes."""
    ramp = np.linspace(40, 220, SIZE, dtype=np.float32)[:, None].repeat(SIZE, 1)
    image = Image.fromarray(np.stack([ramp] * 3, -1).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 40, 120, 120), fill=(230, 80, 60))
    draw.rectangle((140, 120, 220, 220), fill=(40, 90, 200))
    draw.polygon([(60, 220), (120, 150), (150, 230)], fill=(250, 230, 60))
    return image


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image", help="a photo to prepare (default: a drawn scene)")
    p.add_argument("--out", default="docs/images/controlnet-preparation.png")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    photo = Image.open(args.image).convert("RGB").resize((SIZE, SIZE)) if args.image else scene()
    depth = Image.fromarray(np.asarray(photo.convert("L"))).convert("RGB")
    maps = {"canny": canny(photo, 100, 200), "blur": blur(photo, 6), "depth": depth}
    config = ControlNetConfig("stability-8b", depth=1, hidden_size=64, num_heads=1)
    fig, axes = plt.subplots(2, 3, figsize=(10, 7))
    for column, (kind, image) in enumerate(maps.items()):
        for row, reference in enumerate(("stability", "diffusers")):
            control = ControlInput("net.safetensors", image, config=config, control_image_type=kind)
            values = pixels(control, SIZE, SIZE, reference)[0, 0].numpy()
            ax = axes[row, column]
            shown = ax.imshow(values, cmap="gray")
            fig.colorbar(shown, ax=ax, fraction=0.046)
            ax.set_title(f"{kind}, {reference}: [{values.min():.1f}, {values.max():.1f}]", fontsize=9)
            ax.axis("off")
    fig.suptitle("The control image the VAE encodes, per reference (channel 0)")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
