"""Preprocessing for users who have a photo rather than a control map: edges (Canny) and blur.

These make the control image; they are not part of any model. Stability's canny and blur
ControlNets were trained on such maps (their README points to OpenCV's Canny and a Gaussian
blur); the settings here are the caller's.

- `canny`: OpenCV's `cv2.Canny` on the greyscale image, white edges on black, as RGB. OpenCV is the
  optional `[control]` extra: a well-kept implementation of the standard detector, not ours to redo.
- `blur`: Pillow's `ImageFilter.GaussianBlur` with the given radius.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from sd3.errors import ConfigurationError


def canny(image: Image.Image, low: float, high: float) -> Image.Image:
    """Canny edges of `image` with hysteresis thresholds `low` < `high` (0-255 gradient units) -> RGB image.

    Raises:
        ConfigurationError: OpenCV missing, or thresholds out of order."""
    if not 0 <= low < high:
        raise ConfigurationError(f"`canny` thresholds must satisfy 0 <= low < high, got {low} and {high}")
    try:
        import cv2
    except ImportError:
        raise ConfigurationError("`canny` edge maps need OpenCV: pip install 'sd3-from-scratch[control]'") from None
    grey = np.asarray(image.convert("L"))
    edges = cv2.Canny(grey, low, high)  # (H, W) uint8, 255 on edges
    return Image.fromarray(edges).convert("RGB")


def blur(image: Image.Image, radius: float) -> Image.Image:
    """A Gaussian blur of `image` with standard deviation `radius` pixels (Pillow's), as RGB.

    Raises:
        ConfigurationError: a negative radius."""
    if not radius >= 0:
        raise ConfigurationError(f"`blur` radius must be at least 0, got {radius}")
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius))
