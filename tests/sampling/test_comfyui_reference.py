"""`reference="comfyui"`: each point where ComfyUI's SD3 path differs, computed here from its rules.

The expected values are written from ComfyUI's published code as docs/reference.md §6 states it
(comfy/sd1_clip.py, comfy/text_encoders/sd3_clip.py, comfy/sample.py, comfy/samplers.py, nodes.py), in
this file's own code: weighting toward the empty prompt over every chunk, batch noise from one seed,
conditionings of different lengths run apart, the zeroed negative, the first σ's noise scaling and
8-bit truncation. The text encoders' raw features come from our encoders, checked against
transformers elsewhere (tests/clip/test_parity.py).
"""

from dataclasses import replace

import numpy as np
import pytest
import torch

from sd3.sampling import REFERENCES, StableDiffusion3
from sd3.sampling.conditioning import Conditioning
from sd3.sampling.guidance import GuidedVelocity
from sd3.sampling.noise import NoiseStreams
from sd3.vae.images import to_uint8

ARGS = dict(height=32, width=32, steps=2, cfg=4.0, quiet=True)
LONG = "(a photo:1.3) of a " + " ".join(["cat"] * 90) + " on a ((chair)), (blurry:0)"  # two chunks, weights 1.3, 1.21, 0


@pytest.fixture(scope="module")
def comfy(files):
    pipe = StableDiffusion3(files, reference="comfyui", keep="all")
    pipe.encode("warm")  # loads the encoders
    return pipe


@torch.no_grad()
def _features(model, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = model(torch.tensor([ids]))
    return (out[0][0].float(), out[1][0].float()) if isinstance(out, tuple) else (out[0].float(), None)


def _expected(pipe, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's SD3 conditioning of one prompt, chunk by chunk, one model call per row."""
    tokenizers, models = pipe.components.tokenizers(), pipe.models.models
    clip, pooled = [], []
    for name in ("clip_l", "clip_g"):
        tok = tokenizers[name]
        ids, weights = tok.weighted(prompt)
        empty, _ = _features(models[name], [tok.bos_id, tok.eos_id] + [tok.pad_id] * 75)
        rows = []
        for chunk, w in zip(ids.tolist(), weights.tolist()):
            z, first = _features(models[name], chunk)
            pooled.append(first) if not rows else None
            for j, weight in enumerate(w):
                if weight != 1.0:
                    z[j] = (z[j] - empty[j]) * weight + empty[j]
            rows.append(z)
        clip.append(torch.cat(rows))
    t5 = tokenizers["t5"]
    ids, weights = t5.weighted(prompt)
    z, _ = _features(models["t5"], ids[0].tolist())
    empty, _ = _features(models["t5"], [t5.eos_id] + [t5.pad_id] * (ids.shape[1] - 1))
    for j, weight in enumerate(weights[0].tolist()):
        if weight != 1.0:
            z[j] = (z[j] - empty[j]) * weight + empty[j]
    context = torch.nn.functional.pad(torch.cat(clip, dim=-1), (0, z.shape[-1] - sum(c.shape[-1] for c in clip)))
    return torch.cat([context, z]), torch.cat(pooled)


def test_a_weighted_long_prompt_is_every_chunk_weighted_toward_the_empty_prompt(comfy):
    cond = comfy.encode([LONG, "a cat"], ["", "blurry"])
    for row, prompt in ((0, LONG), (1, "a cat")):
        context, y = _expected(comfy, prompt)
        length = int(cond.lengths[row])
        assert length == context.shape[0]
        assert torch.allclose(cond.context[row, :length], context, atol=1e-5, rtol=0)
        assert bool((cond.context[row, length:] == 0).all())  # zero padding past its length
        assert torch.allclose(cond.y[row], y, atol=1e-5, rtol=0)
    assert cond.lengths.tolist()[0] == 2 * 77 + int(comfy.components.tokenizers()["t5"].weighted(LONG)[0].shape[1])
    assert cond.negative_lengths.tolist() == [77 + 77, 77 + 77]


def test_weight_zero_gives_the_empty_prompts_features_not_zeros(comfy):
    """ComfyUI's rule, z_empty + w (z − z_empty): at weight 0 a token's features are the empty prompt's."""
    cond = comfy.encode("a (red:0) cat")
    ids, weights = comfy.components.tokenizers()["clip_l"].weighted("a (red:0) cat")
    j = int((weights[0] == 0).nonzero()[0])
    tok = comfy.components.tokenizers()["clip_l"]
    empty, _ = _features(comfy.models.models["clip_l"], [tok.bos_id, tok.eos_id] + [tok.pad_id] * 75)
    width = empty.shape[-1]
    assert torch.allclose(cond.context[0, j, :width], empty[j], atol=1e-6)
    assert cond.context[0, j, :width].abs().max() > 0.1


def test_without_t5_the_context_is_the_clip_rows_alone(files):
    no_t5 = replace(files, t5xxl=None, t5_tokenizer=None)
    cond = StableDiffusion3(no_t5, reference="comfyui").encode(["a cat", " ".join(["cat"] * 100)])
    assert cond.lengths.tolist() == [77, 154]  # ComfyUI adds no zero rows in T5's place


def test_rows_of_different_lengths_run_apart(comfy):
    """The CFG pair of a 2-chunk prompt and a 1-chunk negative: two model calls, each at its own length."""
    cond = comfy.encode(LONG, "")
    comfy.generate(conditioning=cond, seed=0, **ARGS)  # loads the MMDiT
    model = comfy.models.models["mmdit"]
    x, t = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(3)), torch.tensor(0.7)
    with torch.no_grad():
        v = GuidedVelocity(model, cond, cfg=4.0, slg=None, steps=2, uncond_first=True)(x, t, 0)
        lc, lu = int(cond.lengths[0]), int(cond.negative_lengths[0])
        v_cond = model(x, t * 1000, cond.y, cond.context[:, :lc]).float()
        v_uncond = model(x, t * 1000, cond.negative_y, cond.negative_context[:, :lu]).float()
        padded = model(x, t * 1000, cond.negative_y, cond.negative_context).float()
    assert torch.allclose(v, v_uncond + 4.0 * (v_cond - v_uncond), atol=1e-5, rtol=0)
    assert not torch.allclose(padded, v_uncond, atol=1e-3)  # zero padding would change the result


def test_batch_noise_is_one_stream_from_the_seed(comfy, files):
    """ComfyUI: randn((N, 16, h, w)) from manual_seed(seed); image k is row k, in any batch."""
    streams, shape = NoiseStreams(), (16, 4, 6)
    want = torch.randn(5, *shape, generator=torch.Generator().manual_seed(42))
    assert torch.equal(streams.rows([(42, 3), (42, 4)], *shape), want[3:5])
    assert torch.equal(streams.rows([(42, 1)], *shape), want[1:2])  # an earlier row: the stream restarts
    made = comfy.generate("a cat", seed=42, num_images=3, batch_size=2, **ARGS)
    noise = torch.randn(3, 16, 4, 4, generator=torch.Generator().manual_seed(42))
    again = comfy.generate("a cat", seed=42, num_images=3, batch_size=2, latents=noise, **ARGS)
    assert torch.equal(made.latents, again.latents)
    default = StableDiffusion3(files, reference=replace(REFERENCES["comfyui"], noise="per_image"), keep="all")
    assert not torch.equal(default.generate("a cat", seed=42, num_images=3, batch_size=2, **ARGS).latents[1:],
                           made.latents[1:])  # seed + k would differ from row k


def test_the_first_sigma_scales_the_noise(comfy, files):
    """ddim_uniform starts below σ = 1: ComfyUI starts from σ0·noise + (1 − σ0)·(0 − 0.0609)·1.5305."""
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(7))
    scaled = comfy.generate("a cat", latents=noise, scheduler="ddim_uniform", **ARGS)
    sigma = float(comfy.options(height=32, width=32, steps=2, cfg=4.0, scheduler="ddim_uniform").schedule[0])
    assert sigma < 1
    plain = StableDiffusion3(files, reference=replace(REFERENCES["comfyui"], noise_scaling=False), keep="all")
    start = sigma * noise + (1 - sigma) * ((0 - 0.0609) * 1.5305)
    assert torch.allclose(plain.generate("a cat", latents=start, scheduler="ddim_uniform", **ARGS).latents,
                          scaled.latents, atol=1e-6)


def test_negative_zero_zeroes_the_negatives_at_their_length(files):
    for name in ("default", "comfyui"):
        pipe = StableDiffusion3(files, reference=name, keep="all")
        cond = pipe.encode("a cat", "blurry, low quality")
        zeroed = pipe.generate("a cat", "blurry, low quality", negative_zero=True, seed=1, **ARGS)
        by_hand = pipe.generate(conditioning=Conditioning(cond.context, cond.y, torch.zeros_like(cond.negative_context),
                                                          torch.zeros_like(cond.negative_y), cond.lengths,
                                                          cond.negative_lengths), seed=1, **ARGS)
        assert torch.equal(zeroed.latents, by_hand.latents), name
        assert not torch.equal(zeroed.latents, pipe.generate("a cat", "blurry, low quality", seed=1, **ARGS).latents)
        assert zeroed.options.describe()["negative_zero"] is True


def test_pixels_are_truncated_as_comfyuis_save_image():
    images = torch.linspace(-1.2, 1.2, 3 * 4 * 500).reshape(1, 3, 40, 50)
    comfy = (255.0 * np.clip((images.permute(0, 2, 3, 1).numpy() + 1.0) / 2.0, 0, 1)).astype(np.uint8)  # SaveImage
    assert np.array_equal(to_uint8(images, "truncate"), comfy)
    assert not np.array_equal(to_uint8(images), comfy)  # rounding differs on many pixels


def test_the_preset(comfy):
    ref = REFERENCES["comfyui"]
    assert (ref.uncond_first, ref.uncond_at_cfg_one, ref.round_latents, ref.t5_truncate) == (True, False, False, False)
    assert comfy.options(height=32, width=32, steps=4, cfg=4.0).schedule.tolist() == pytest.approx([1.0, 0.9, 0.75, 0.5, 0.0])
    assert "scheduler" not in comfy.options(height=32, width=32, steps=4, cfg=4.0).describe()  # old manifests match
    assert "scheduler" not in comfy.options(height=32, width=32, steps=4, cfg=4.0, scheduler="simple").describe()
    assert comfy.options(height=32, width=32, steps=4, cfg=4.0, scheduler="beta").describe()["scheduler"] == "beta"


def test_an_overlong_prompt_is_refused_before_loading(files):
    from sd3.errors import TextEncodingError

    loaded = []
    for t5, message in ((files.t5xxl, "1101 T5 tokens, more than the 1024"), (None, "15 CLIP chunks of 77 tokens, more than the 14")):
        chosen = replace(files, t5xxl=t5, t5_tokenizer=files.t5_tokenizer if t5 else None)
        pipe = StableDiffusion3(chosen, reference="comfyui", on_load=lambda name, module: loaded.append(name))
        with pytest.raises(TextEncodingError, match=message):
            pipe.generate(" ".join(["cat"] * 1100), seed=0, **ARGS)
    assert loaded == []


def test_a_plain_prompt_gives_the_default_references_latents(comfy, files):
    """What ComfyUI shares with our default (its `simple` scheduler, one image's noise, unweighted short
    prompts): only the CFG batch order differs, which changes rounding alone."""
    default = StableDiffusion3(files, keep="all").generate("a photo of a cat", "blurry", seed=3, **ARGS)
    ours = comfy.generate("a photo of a cat", "blurry", seed=3, **ARGS)
    assert torch.allclose(ours.latents, default.latents, atol=1e-5, rtol=0)


def test_conditioning_lengths_survive_rows_save_and_load(comfy, tmp_path):
    from sd3.errors import ConfigurationError

    cond = comfy.encode([LONG, "a cat"], ["", "blurry"])
    cond.save(tmp_path / "c.safetensors")
    loaded = Conditioning.load(tmp_path / "c.safetensors")
    assert torch.equal(loaded.lengths, cond.lengths) and torch.equal(loaded.negative_lengths, cond.negative_lengths)
    assert loaded.rows([1, 1]).lengths.tolist() == [int(cond.lengths[1])] * 2
    with pytest.raises(ConfigurationError, match="`lengths` and `negative_lengths` come together"):
        Conditioning(cond.context, cond.y, cond.negative_context, cond.negative_y, [231, 154], cond.negative_lengths)


def test_generate_many_in_chunks_equals_generate(comfy):
    """The noise stream is kept across chunks; each chunk's conditioning keeps its rows' lengths."""
    prompts = [LONG, "a cat", "a (red:1.4) dog"]
    whole = comfy.generate(prompts, seed=4, batch_size=1, **ARGS)
    settings = {k: v for k, v in ARGS.items() if k != "quiet"}
    streamed = list(comfy.generate_many(prompts, seed=4, chunk_size=1, quiet=True, **settings))
    for a, b in zip(whole.images, streamed):
        assert np.array_equal(np.asarray(a), np.asarray(b.image))


def test_a_request_made_by_hand_draws_its_own_seeds_stream(comfy):
    from sd3.sampling.requests import ImageRequest

    request = ImageRequest(index=0, prompt="a cat", negative_prompt="", seed=100)
    assert request.stream == (100, 0)
