"""Tiled decoding and encoding.

Three claims, each tested for what it can honestly show:
1. The tiling bookkeeping (offsets, coverage, blend weights summing to one) is exact: for a
   pointwise operator, tiles blend to the untiled result (max |Δ| ≤ 1e-5).
2. A tile that covers the image is a no-op: bit-identical to untiled decoding.
3. No seams. Tiles of the real decoder disagree because GroupNorm and the mid-block attention
   pool whole-input statistics. A stand-in with exactly that flaw (a pointwise map plus each
   tile's own mean) shows the blend: tiled, the image may change no faster across a tile border
   than the untiled image does anywhere, plus the offset spread over the blend ramp.
4. On the VAE itself tiles cannot equal the untiled result: on random weights they differ by up
   to ~0.7 of the mean |output| (trained weights far less), and we bound only that (mean |Δ|
   below mean |output|): random decoders are too noisy at the pixel level to show a seam.
"""

import pytest
import torch
from torch import nn

from sd3.errors import VAEDecodingError
from sd3.testing.tiny.vae import vae_state_dict
from sd3.vae import decode_latents, encode_images, load_vae
from sd3.vae.tiling import tiled


class PointwiseUpsampler(nn.Module):
    """A stand-in decoder without spatial context: a 1x1 conv, then 8x nearest upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(16, 3, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.proj(z), scale_factor=8.0, mode="nearest")


@pytest.mark.parametrize("h, w, tile, overlap", [(20, 20, 8, 4), (13, 29, 8, 4), (9, 30, 6, 3), (16, 8, 16, 4)])
def test_tiling_bookkeeping_is_exact_for_a_pointwise_operator(h, w, tile, overlap):
    fn = PointwiseUpsampler()
    z = torch.randn(2, 16, h, w)
    want = fn(z)
    got = tiled(fn, z, tile=tile, overlap=overlap, scale=8)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-5


@pytest.fixture(scope="module")
def vae():
    return load_vae(vae_state_dict(seed=4))


def _smooth_latents(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Low-frequency latents, like a real image's, so that seams would stand out."""
    coarse = torch.randn(1, 16, max(h // 4, 1), max(w // 4, 1), generator=torch.Generator().manual_seed(seed))
    return nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")


def test_a_tile_covering_the_image_is_a_noop(vae):
    z = _smooth_latents(12, 10)
    assert torch.equal(decode_latents(vae, z, tile_size=12, tile_overlap=4), decode_latents(vae, z))


class TileStatistics(PointwiseUpsampler):
    """Pointwise, plus the mean of whatever input it is given: tiles disagree as GroupNorm makes them."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return super().forward(z) + z.mean(dim=(1, 2, 3))[:, None, None, None]


def test_blending_leaves_no_seam():
    h, w, tile, overlap = 16, 40, 16, 8
    # A steep left-to-right ramp, so that each tile's mean differs from its neighbour's by ~0.8.
    z = torch.linspace(-4, 4, w).expand(1, 16, h, w).contiguous()
    fn = TileStatistics()
    image = tiled(fn, z, tile=tile, overlap=overlap, scale=8)
    untiled_step = (fn(z)[..., 1:] - fn(z)[..., :-1]).abs().max()
    step = (image[..., 1:] - image[..., :-1]).abs().max()
    offset_spread = 0.8 / (8 * overlap)  # a tile's offset change, spread over its ramp
    assert step <= untiled_step + 2 * offset_spread


def test_tiled_vae_decoding_stays_within_the_stated_bound(vae):
    z = _smooth_latents(24, 32, seed=1)
    image = decode_latents(vae, z, tile_size=16, tile_overlap=8)
    untiled = decode_latents(vae, z)
    assert image.shape == untiled.shape == (1, 3, 192, 256)
    assert torch.isfinite(image).all()
    assert (image - untiled).abs().mean() < untiled.abs().mean()


def test_tiled_encoding_covers_the_image_and_stays_close(vae):
    image = decode_latents(vae, _smooth_latents(16, 24, seed=2)).clamp(-1, 1)
    untiled = encode_images(vae, image)
    got = encode_images(vae, image, tile_size=64, tile_overlap=32)
    assert got.shape == untiled.shape == (1, 16, 16, 24)
    assert torch.isfinite(got).all()
    assert (got - untiled).abs().mean() < untiled.abs().mean()


def test_bad_overlap(vae):

    with pytest.raises(VAEDecodingError, match=r"`tile_size` \(8\) must be at least twice `tile_overlap` \(5\)"):
        decode_latents(vae, _smooth_latents(20, 20), tile_size=8, tile_overlap=5)


class ConstantPerTile:
    """A stand-in decoder whose every tile is one random constant: the worst case for a seam."""

    def __init__(self, scale: int) -> None:
        self.scale, self.values = scale, []
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        value = torch.rand((), generator=self.generator) * 2 - 1
        self.values.append(value)
        return value.expand(z.shape[0], 3, z.shape[2] * self.scale, z.shape[3] * self.scale)


@pytest.mark.parametrize("tile", range(32, 70, 3))
@pytest.mark.parametrize("height, width", [(40, 97), (65, 64), (130, 33)])
def test_no_step_exceeds_a_linear_blend_for_any_accepted_tile(tile, height, width):
    """Every tile size from the smallest accepted (twice the 16-pixel overlap), on sizes that are not
    multiples of the stride: across any border and corner, the image changes no faster than a linear
    blend of the two most different tiles over the 16 x 8 output pixels they share at least."""
    fn = ConstantPerTile(scale=8)
    image = tiled(fn, torch.zeros(1, 16, height, width), tile=tile, overlap=16, scale=8)
    spread = max(fn.values) - min(fn.values)
    bound = spread / (16 * 8) * (1 + 1e-5)
    steps = [(image[..., 1:, :] - image[..., :-1, :]).abs().max(), (image[..., 1:] - image[..., :-1]).abs().max()]
    assert max(steps) <= bound and (len(fn.values) > 1 or max(height, width) <= tile)


def test_tiles_spread_evenly_with_at_least_the_overlap():
    from sd3.vae.tiling import _starts

    for size in range(33, 300):
        starts = _starts(size, 32, 16)
        shared = [a + 32 - b for a, b in zip(starts, starts[1:])]
        assert starts[0] == 0 and starts[-1] == size - 32 and min(shared) >= 16 and max(shared) - min(shared) <= 1


def test_tiled_decoding_approaches_untiled_as_the_overlap_grows(vae):
    """Tiles twice the overlap: the larger both, the more of the image each tile's GroupNorm and
    attention see, and the closer the result comes, until one tile covers it (exact)."""
    z = _smooth_latents(40, 40, seed=1)
    with torch.no_grad():
        untiled = decode_latents(vae, z)
        gaps = [(decode_latents(vae, z, tile_size=2 * o, tile_overlap=o) - untiled).abs().mean().item()
                for o in (4, 8, 12, 16, 20)]
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] == 0.0


@pytest.mark.parametrize("height, width, tile, overlap", [(144, 144, 64, 32), (1000, 96, 512, 128), (200, 328, 96, 32)])
def test_encoding_tiles_start_on_whole_latent_pixels(height, width, tile, overlap):
    """A local 8x8 map (an average pool standing in for the encoder) tiled equals it untiled: every
    tile starts on a multiple of 8 pixels, so its latents land on whole latent pixels."""
    image = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    pool = lambda x: torch.nn.functional.avg_pool2d(x, 8)  # noqa: E731
    assert (tiled(pool, image, tile=tile, overlap=overlap, scale=1 / 8) - pool(image)).abs().max() < 1e-5
    with pytest.raises(VAEDecodingError, match="multiples of 8"):
        tiled(pool, image[..., :-4], tile=tile, overlap=overlap, scale=1 / 8)
