"""Tiled decoding and encoding: overlapping tiles, blended with linear ramps so no seam shows.

Tiles are spread evenly, so every pair of neighbours shares at least the overlap (more where the
image is not a multiple of the stride), and each tile's weight ramps linearly across exactly what
it shares, in both directions. A tile must be at least twice the overlap: then a value changes
across any border no faster than a linear blend over the overlap would change it, whatever the
sizes (tests/vae/test_tiling.py; stable-diffusion.cpp fixed the same faults in its PRs 372 and 484).

Activation memory grows with the tile size, not the image size; only the output itself grows
with the image. The mid block attends globally and GroupNorm pools statistics over the whole
input, so a tiled result is close to, not equal to, the untiled one (tests/vae/test_tiling.py
states by how much). Untiled is the default wherever the image fits.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from sd3.errors import VAEDecodingError


def _starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Tile start offsets covering [0, size): the fewest tiles whose neighbours share at least
    `overlap` pixels, spread evenly, so the overlaps grow alike where `size` is not a multiple.
    Starts are multiples of `align` (8 when encoding, so that each tile's latents land on whole
    latent pixels); `size`, `tile` and `overlap` must then be multiples of it too."""
    if size <= tile:
        return [0]
    size, tile, overlap = size // align, tile // align, overlap // align
    count = math.ceil((size - overlap) / (tile - overlap))
    return [align * round(k * (size - tile) / (count - 1)) for k in range(count)]


def _ramp(length: int, rise: int, fall: int) -> torch.Tensor:
    """Weights (length,): rising linearly over the first `rise` values (the overlap with the tile
    before), falling over the last `fall` (with the tile after), 1 between; where the two ramps
    meet in a short tile, the smaller wins, so the weights stay continuous. Never 0."""
    i = torch.arange(length, dtype=torch.float32) + 0.5
    weights = torch.ones(length)
    if rise:
        weights = torch.minimum(weights, i / rise)
    if fall:
        weights = torch.minimum(weights, (length - i) / fall)
    return weights


def tiled(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, tile: int, overlap: int, scale: float
) -> torch.Tensor:
    """Apply a spatial map `fn` (b, c, h, w) -> (b, c', h*scale, w*scale) tile by tile and blend.

    Args:
        fn: the decoder (scale 8) or encoder (scale 1/8).
        x: the input, (b, c, h, w).
        tile: tile side in input pixels; overlap: pixels shared by neighbouring tiles. Encoding
            (scale < 1) needs both, and the input's sides, to be multiples of 1 / scale.

    Raises:
        VAEDecodingError: a tile under twice the overlap, or sizes that do not align.
    """
    if not 0 < 2 * overlap <= tile:
        raise VAEDecodingError(
            f"`tile_size` ({tile}) must be at least twice `tile_overlap` ({overlap}), and the overlap positive")
    _, _, height, width = x.shape
    align = round(1 / scale) if scale < 1 else 1
    if any(n % align for n in (tile, overlap, height, width)):
        raise VAEDecodingError(
            f"encoding in tiles needs `tile_size` ({tile}), `tile_overlap` ({overlap}) and the image sides "
            f"({height}x{width}) to be multiples of {align}")
    rows, cols = _starts(height, tile, overlap, align), _starts(width, tile, overlap, align)
    out = weight = None
    for r, top in enumerate(rows):
        for c, left in enumerate(cols):
            th, tw = min(tile, height), min(tile, width)
            piece = fn(x[:, :, top : top + th, left : left + tw]).float()
            if out is None:
                out = torch.zeros(*piece.shape[:2], round(height * scale), round(width * scale), device=piece.device)
                weight = torch.zeros(1, 1, *out.shape[2:], device=piece.device)
            # Ramps across each actual overlap (in output pixels), in both directions: corners blend too.
            mask = _ramp(piece.shape[2], *_shared(rows, r, th, scale))[:, None] * \
                _ramp(piece.shape[3], *_shared(cols, c, tw, scale))[None, :]
            mask = mask.to(piece.device)
            y0, x0 = round(top * scale), round(left * scale)
            out[:, :, y0 : y0 + piece.shape[2], x0 : x0 + piece.shape[3]] += piece * mask
            weight[:, :, y0 : y0 + piece.shape[2], x0 : x0 + piece.shape[3]] += mask
    return out / weight


def _shared(starts: list[int], k: int, tile: int, scale: float) -> tuple[int, int]:
    """Output pixels tile k shares with the tile before it and with the one after it."""
    before = round((starts[k - 1] + tile - starts[k]) * scale) if k > 0 else 0
    after = round((starts[k] + tile - starts[k + 1]) * scale) if k + 1 < len(starts) else 0
    return before, after
