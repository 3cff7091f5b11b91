"""Tiled decoding and encoding: overlapping tiles, blended with linear ramps so no seam shows.

Activation memory grows with the tile size, not the image size; only the output itself grows
with the image. The mid block attends globally and GroupNorm pools statistics over the whole
input, so a tiled result is close to, not equal to, the untiled one (tests/vae/test_tiling.py
states by how much). Untiled is the default wherever the image fits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sd3.errors import VAEDecodingError


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile start offsets covering [0, size) with at least `overlap` shared between neighbours."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(length: int, fade: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    """Weights (length,) rising over the first `fade` values and falling over the last, never 0."""
    weights = torch.ones(length)
    ramp = (torch.arange(fade, dtype=torch.float32) + 0.5) / fade
    if fade_in:
        weights[:fade] = ramp
    if fade_out:
        weights[length - fade :] = ramp.flip(0)
    return weights


def tiled(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, tile: int, overlap: int, scale: float
) -> torch.Tensor:
    """Apply a spatial map `fn` (b, c, h, w) -> (b, c', h*scale, w*scale) tile by tile and blend.

    Args:
        fn: the decoder (scale 8) or encoder (scale 1/8).
        x: the input, (b, c, h, w).
        tile: tile side in input pixels; overlap: pixels shared by neighbouring tiles.
    """
    if not 0 < overlap < tile:
        raise VAEDecodingError(f"tile overlap must be between 0 and the tile size {tile}, got {overlap}")
    _, _, height, width = x.shape
    rows, cols = _starts(height, tile, overlap), _starts(width, tile, overlap)
    out = weight = None
    for top in rows:
        for left in cols:
            th, tw = min(tile, height), min(tile, width)
            piece = fn(x[:, :, top : top + th, left : left + tw]).float()
            if out is None:
                out = torch.zeros(*piece.shape[:2], round(height * scale), round(width * scale), device=piece.device)
                weight = torch.zeros(1, 1, *out.shape[2:], device=piece.device)
            fade = round(overlap * scale)
            mask = _ramp(piece.shape[2], fade, top > 0, top + th < height)[:, None] * _ramp(
                piece.shape[3], fade, left > 0, left + tw < width
            )[None, :]
            mask = mask.to(piece.device)
            y0, x0 = round(top * scale), round(left * scale)
            out[:, :, y0 : y0 + piece.shape[2], x0 : x0 + piece.shape[3]] += piece * mask
            weight[:, :, y0 : y0 + piece.shape[2], x0 : x0 + piece.shape[3]] += mask
    return out / weight
