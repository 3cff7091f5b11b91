"""Our VAE against diffusers' `AutoencoderKL` on the same tiny random checkpoints.

Reference: diffusers' model built with the SD3 VAE config (narrow channels) and loaded strictly
through diffusers' `convert_ldm_vae_checkpoint` (sd3/testing/tiny/vae.py). Tolerance: max |Δ| ≤ 1e-5 on
outputs of order one in float32; the implementations differ in summation order only (1x1 convs vs
linear layers in the attention), which measures 2e-6 to 7e-6 over ~30 stacked convolutions.
"""

import pytest
import torch

from sd3.testing.tiny.vae import diffusers_vae, vae_state_dict
from sd3.vae import decode_latents, encode_images, load_vae, to_pil

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from safetensors.torch import save_file

    state_dict = vae_state_dict(seed=1)
    path = tmp_path_factory.mktemp("vae") / "tiny.safetensors"
    save_file(state_dict, str(path))
    return load_vae(path), diffusers_vae(state_dict)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert 0.2 < want.std() < 5, "outputs should be of order one for the tolerance to mean something"
    delta = (got - want).abs().max().item()
    assert delta <= TOLERANCE, f"max |Δ| = {delta:.2e} > {TOLERANCE:.0e}"


@pytest.mark.parametrize("batch, h, w", [(1, 4, 4), (2, 6, 5), (1, 8, 12), (1, 11, 7)])
def test_decode_matches_diffusers(pair, batch, h, w):
    ours, ref = pair
    z = torch.randn(batch, 16, h, w, generator=torch.Generator().manual_seed(h * w))
    _close(ours.decode(z), ref.decode(z).sample)


@pytest.mark.parametrize("batch, height, width", [(1, 32, 32), (2, 48, 40), (1, 64, 96), (1, 56, 24)])
def test_encode_mean_matches_diffusers(pair, batch, height, width):
    ours, ref = pair
    image = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(height)) * 2 - 1
    _close(ours.encode(image), ref.encode(image).latent_dist.mean)


def test_sd3_scaling_matches_diffusers_pipeline_formulas(pair):
    """decode(z / 1.5305 + 0.0609) as StableDiffusion3Pipeline does; encode -> (mean - 0.0609) * 1.5305."""
    ours, ref = pair
    cfg = ref.config
    z = torch.randn(1, 16, 6, 6, generator=torch.Generator().manual_seed(3))
    _close(decode_latents(ours, z), ref.decode(z / cfg.scaling_factor + cfg.shift_factor).sample)
    image = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(4)) * 2 - 1
    want = (ref.encode(image).latent_dist.mean - cfg.shift_factor) * cfg.scaling_factor
    _close(encode_images(ours, image), want)


def test_sampled_latents_match_diffusers(pair):
    ours, ref = pair
    cfg = ref.config
    image = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(5)) * 2 - 1
    got = encode_images(ours, image, generator=torch.Generator().manual_seed(9))
    sample = ref.encode(image).latent_dist.sample(generator=torch.Generator().manual_seed(9))
    _close(got, (sample - cfg.shift_factor) * cfg.scaling_factor)
    assert (got - encode_images(ours, image)).abs().max() > 1e-3, "sampling should differ from the mean"


def test_pil_images_match_diffusers_postprocessing(pair):
    """Pixels: clamp((x + 1) * 127.5, 0, 255), rounded as diffusers' VaeImageProcessor rounds them."""
    from diffusers.image_processor import VaeImageProcessor

    ours, _ = pair
    with torch.no_grad():
        images = decode_latents(ours, torch.randn(2, 16, 5, 7, generator=torch.Generator().manual_seed(6)))
    want = VaeImageProcessor(vae_scale_factor=8).postprocess(images, output_type="pil")
    got = to_pil(images)
    for a, b in zip(got, want):
        assert a.size == b.size == (56, 40)
        assert a.tobytes() == b.tobytes()
