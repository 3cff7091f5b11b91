"""Image to image and inpainting against diffusers' SD3 img2img and inpaint pipelines, same seed.

Both sides get the same tiny checkpoint, prompt, init image (resized by both from 40x56 to 48x64),
mask, schedule and seed; diffusers gets `generator=torch.Generator("cpu").manual_seed(seed)`, and
ours runs with reference "diffusers" (the posterior sampled from the seed, then the noise, as
diffusers draws them). Tolerance as for text to image: final latents and decoded images (float, in
[0, 1]) max |Δ| ≤ 1e-4 in float32, the implementations differing by summation order only.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from sd3 import ConfigurationError
from sd3.sampling import Reference, StableDiffusion3
from sd3.testing.tiny.pipeline import diffusers_pipeline
from sd3.vae import decode_latents, load_vae

TOLERANCE = 1e-4
HEIGHT, WIDTH, STEPS, SEED = 64, 48, 4, 21
PROMPT, NEGATIVE = "a photo of a cat sitting on a red chair", "blurry, low quality"


@pytest.fixture(scope="module")
def pipelines(tiny):
    from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3InpaintPipeline

    components = diffusers_pipeline(tiny).components
    return {"img2img": StableDiffusion3Img2ImgPipeline(**components),
            "inpaint": StableDiffusion3InpaintPipeline(**components)}


@pytest.fixture(scope="module")
def init_image():
    pixels = np.random.default_rng(0).integers(0, 256, size=(56, 40, 3), dtype=np.uint8)
    return Image.fromarray(pixels)  # 40 wide, 56 high: both sides resize it to 48 x 64


@pytest.fixture(scope="module")
def mask():
    values = np.zeros((56, 40), dtype=np.uint8)
    values[8:40, 12:36] = 255  # white: repaint
    return Image.fromarray(values)


def _images(tiny, latents, shift=True):
    return (decode_latents(load_vae(tiny.checkpoint), latents, shift=shift) / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("kind", ["img2img", "inpaint"])
@pytest.mark.parametrize("strength", [1.0, 0.6, 0.3])
@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_matches_diffusers(pipelines, tiny, files, init_image, mask, kind, strength, cfg):
    extra = {"mask_image": mask} if kind == "inpaint" else {}
    common = dict(prompt=PROMPT, negative_prompt=NEGATIVE, image=init_image, strength=strength, height=HEIGHT,
                  width=WIDTH, num_inference_steps=STEPS, guidance_scale=cfg, max_sequence_length=256, **extra)
    pipe = pipelines[kind]
    want = pipe(generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent", **common).images
    want_images = pipe(generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt", **common).images

    ours = StableDiffusion3(files, reference=Reference.named("diffusers"))
    steps = []
    result = ours.generate(PROMPT, NEGATIVE, height=HEIGHT, width=WIDTH, steps=STEPS, cfg=cfg, seed=SEED,
                           init_image=init_image, strength=strength, mask=mask if kind == "inpaint" else None,
                           on_step=lambda i, n, x: steps.append(n), quiet=True)
    expected_steps = STEPS - int(max(STEPS - STEPS * strength, 0))
    assert result.steps == expected_steps and steps == [expected_steps] * expected_steps
    delta = (result.latents - want).abs().max().item()
    assert delta <= TOLERANCE, f"{kind} strength {strength} cfg {cfg}: latents max |Δ| = {delta:.2e}"
    images = _images(tiny, result.latents, shift=kind == "img2img")  # diffusers' inpaint decodes without the shift
    delta = (images - want_images).abs().max().item()
    assert delta <= TOLERANCE, f"{kind} strength {strength} cfg {cfg}: images max |Δ| = {delta:.2e}"
    assert result.images[0].size == (WIDTH, HEIGHT)


def test_default_reference_at_strength_one_is_text_to_image(files, init_image):
    pipe = StableDiffusion3(files, keep="all")
    settings = dict(height=HEIGHT, width=WIDTH, steps=STEPS, cfg=4.0, seed=SEED, quiet=True)
    edited = pipe.generate(PROMPT, NEGATIVE, init_image=init_image, strength=1.0, **settings)
    plain = pipe.generate(PROMPT, NEGATIVE, **settings)
    assert torch.equal(edited.latents, plain.latents)  # the posterior mean weighs 0 at sigma 1; the seed's noise


def test_inpainting_keeps_the_unmasked_latents(files, init_image, mask):
    pipe = StableDiffusion3(files, keep="all")
    result = pipe.generate(PROMPT, NEGATIVE, height=HEIGHT, width=WIDTH, steps=STEPS, cfg=4.0, seed=SEED,
                           init_image=init_image, strength=0.6, mask=mask, quiet=True)
    from sd3.sampling import img2img

    grid = img2img.preprocess_mask(mask, HEIGHT, WIDTH)[0, 0]
    kept = pipe.generate(PROMPT, NEGATIVE, height=HEIGHT, width=WIDTH, steps=STEPS, cfg=4.0, seed=SEED,
                         init_image=init_image, strength=0.6, mask=Image.new("L", mask.size, 0), quiet=True)
    # outside the mask the result is the encoded image itself (x0, reached at sigma 0)
    assert torch.equal(result.latents[0][:, grid == 0], kept.latents[0][:, grid == 0])
    assert not torch.equal(result.latents[0][:, grid == 1], kept.latents[0][:, grid == 1])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_greyscale_rgba_and_palette_images_are_converted(files, init_image, mode):
    """Any mode starts from the image's RGB version: the same latents as the caller's own conversion."""
    pipe = StableDiffusion3(files, keep="all")
    settings = dict(height=32, width=32, steps=2, cfg=4.0, strength=0.5, quiet=True)
    image = init_image.convert(mode)
    result = pipe.generate(PROMPT, init_image=image, **settings)
    assert torch.equal(result.latents, pipe.generate(PROMPT, init_image=image.convert("RGB"), **settings).latents)
    if mode == "L":  # the colour is gone, so the start differs from the colour image's
        assert not torch.equal(result.latents, pipe.generate(PROMPT, init_image=init_image, **settings).latents)
    assert result.images[0].size == (32, 32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strength=0.5), "`strength` needs an `init_image`"),
        (dict(init_image="IMG", strength=0.0), r"`strength` must be in \(0, 1\], got 0.0"),
        (dict(init_image="IMG", strength=1.5), r"`strength` must be in \(0, 1\], got 1.5"),
        (dict(mask="MASK"), "a `mask` needs an `init_image`"),
        (dict(init_image="IMG", mask="SMALL"), r"the `mask` is \(8, 8\) pixels but the `init_image` is \(40, 56\)"),
        (dict(init_image="/no/such/image.png"), "`init_image` /no/such/image.png: file not found"),
        (dict(init_image="BROKEN"), "is not a readable image"),
    ],
)
def test_bad_inputs_are_refused_before_anything_loads(files, init_image, mask, tmp_path, kwargs, message):
    init_image.save(tmp_path / "image.png")
    (tmp_path / "broken.png").write_bytes(b"not a PNG at all")
    names = {"IMG": str(tmp_path / "image.png"), "MASK": mask, "SMALL": Image.new("L", (8, 8)),
             "BROKEN": str(tmp_path / "broken.png")}
    kwargs = {k: names.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    pipe = StableDiffusion3(files)
    with pytest.raises(ConfigurationError, match=message):
        pipe.generate(PROMPT, height=HEIGHT, width=WIDTH, steps=STEPS, cfg=4.0, **kwargs)
    assert pipe.models.loads == {}


def test_a_tensor_a_path_and_a_pil_image_give_the_same_result(files, init_image, tmp_path):
    image = init_image.resize((WIDTH, HEIGHT))
    image.save(tmp_path / "image.png")
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    pipe = StableDiffusion3(files, keep="all")
    settings = dict(height=HEIGHT, width=WIDTH, steps=STEPS, cfg=4.0, seed=SEED, strength=0.6, quiet=True)
    results = [pipe.generate(PROMPT, init_image=source, **settings).latents
               for source in (image, tensor, str(tmp_path / "image.png"))]
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    with pytest.raises(ConfigurationError, match=r"`init_image` as a tensor must be \(1, 3, 64, 48\)"):
        pipe.generate(PROMPT, init_image=tensor[:, :32], **settings)
