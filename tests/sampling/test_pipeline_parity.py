"""End to end against diffusers' `StableDiffusion3Pipeline` on the same tiny checkpoint.

Both sides get the same prompts, negative prompts, initial latents and schedule; ours runs with
reference "diffusers" (T5 length 256, [uncond, cond], no uncond pass at cfg 1, its schedule).
Tolerance: final latents and decoded images (float, in [0, 1]) max |Δ| ≤ 1e-4 in float32; the
implementations differ by summation order only (measured ~7e-6 on latents of std ~2).
"""

import pytest
import torch

from sd3.sampling import Reference, SkipLayerGuidanceConfig, StableDiffusion3
from sd3.testing.tiny.pipeline import diffusers_pipeline
from sd3.vae import decode_latents, load_vae

TOLERANCE = 1e-4
HEIGHT, WIDTH, STEPS = 64, 48, 4
PROMPTS = ["a photo of a cat sitting on a red chair", "an astronaut riding a horse on the moon"]
NEGATIVE = ["blurry, low quality", "watermark, text"]


@pytest.fixture(scope="module")
def pipe(tiny):
    return diffusers_pipeline(tiny)


def _latents(n: int) -> torch.Tensor:
    return torch.randn(n, 16, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(42))


@pytest.mark.parametrize(
    "case, cfg, slg, n",
    [
        ("cfg 4", 4.0, None, 1),
        ("cfg 1: no unconditional pass", 1.0, None, 1),
        ("skip-layer guidance", 3.0, SkipLayerGuidanceConfig(scale=2.8, start=0.01, end=0.8, layers=(1,)), 1),
        ("batch 2", 4.0, None, 2),
    ],
)
def test_matches_diffusers(pipe, tiny, files, case, cfg, slg, n):
    ours = StableDiffusion3(files, reference=Reference.named("diffusers"))
    latents = _latents(n)
    result = ours.generate(
        PROMPTS[:n], NEGATIVE[:n], height=HEIGHT, width=WIDTH, steps=STEPS, cfg=cfg, latents=latents, slg=slg, batch_size=n
    )
    extra = {}
    if slg is not None:
        extra = dict(skip_guidance_layers=list(slg.layers), skip_layer_guidance_scale=slg.scale,
                     skip_layer_guidance_start=slg.start, skip_layer_guidance_stop=slg.end)
    common = dict(prompt=PROMPTS[:n], negative_prompt=NEGATIVE[:n], height=HEIGHT, width=WIDTH,
                  num_inference_steps=STEPS, guidance_scale=cfg, max_sequence_length=256, **extra)
    want_latents = pipe(latents=latents, output_type="latent", **common).images
    want_images = pipe(latents=latents, output_type="pt", **common).images

    assert 0.5 < want_latents.std() < 5
    delta = (result.latents - want_latents).abs().max().item()
    assert delta <= TOLERANCE, f"{case}: latents max |Δ| = {delta:.2e}"
    images = (decode_latents(load_vae(tiny.checkpoint), result.latents) / 2 + 0.5).clamp(0, 1)
    delta = (images - want_images).abs().max().item()
    assert delta <= TOLERANCE, f"{case}: images max |Δ| = {delta:.2e}"
    assert [im.size for im in result.images] == [(WIDTH, HEIGHT)] * n


def test_explicit_sigmas_match_diffusers(pipe, files):
    """diffusers shifts the sigmas it is given; ours takes them as final, so we pass shifted ones."""
    raw = [1.0, 0.75, 0.4, 0.1]
    shifted = [3 * s / (1 + 2 * s) for s in raw]
    ours = StableDiffusion3(files, reference=Reference.named("diffusers"))
    latents = _latents(1)
    got = ours.generate(PROMPTS[:1], NEGATIVE[:1], height=HEIGHT, width=WIDTH, cfg=4.0, sigmas=shifted, latents=latents)
    want = pipe(prompt=PROMPTS[:1], negative_prompt=NEGATIVE[:1], height=HEIGHT, width=WIDTH, sigmas=raw,
                guidance_scale=4.0, latents=latents, output_type="latent", max_sequence_length=256).images
    assert (got.latents - want).abs().max() <= TOLERANCE
