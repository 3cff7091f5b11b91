"""ControlNet end to end: ours under `reference="diffusers"` against diffusers'
`StableDiffusion3ControlNetPipeline` on the same tiny files, same seed; and the checks before any load.

diffusers draws the control image's posterior sample from the global RNG (`latent_dist.sample()`
with no generator) for the image repeated over its CFG batch; seeding the global RNG with the seed
just before its call gives the draw our `posterior="sample"` makes from a generator seeded with the
seed, so both sides get the same control latent. Tolerance: final latents max |Δ| ≤ 1e-4 in float32
(the pipeline parity test's: summation order only).
"""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sd3.errors import ConfigurationError
from sd3.sampling import StableDiffusion3
from sd3.sampling.control import ControlInput
from sd3.testing.tiny.controlnet import (
    diffusers_controlnet,
    diffusers_controlnet_model,
    stability_controlnet,
    stability_to_diffusers,
)
from sd3.testing.tiny.pipeline import diffusers_pipeline

HEIGHT, WIDTH, STEPS, SEED = 64, 48, 3, 5
LATENTS = torch.randn(1, 16, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(42))


@pytest.fixture(scope="module")
def control_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("control") / "edges.png"
    pixels = torch.rand(HEIGHT + 16, WIDTH + 8, 3, generator=torch.Generator().manual_seed(1))
    Image.fromarray((pixels * 255).byte().numpy()).save(path)  # another size: both sides resize it
    return path


@pytest.fixture(scope="module")
def nets(tiny, tmp_path_factory):
    """name -> (our file, diffusers' model) for a joint (InstantX-like) net and Stability's 8B layout."""
    folder = tmp_path_factory.mktemp("nets")
    joint = diffusers_controlnet(tiny.mmdit, 1, seed=3)
    stability = stability_controlnet(tiny.mmdit, 1, control_type=2, seed=4)
    save_file(joint, str(folder / "joint.safetensors"))
    save_file(stability, str(folder / "depth.safetensors"))
    inpainting = diffusers_controlnet(tiny.mmdit, 1, extra_channels=1, seed=6)
    save_file(inpainting, str(folder / "inpainting.safetensors"))
    return {
        "joint": (folder / "joint.safetensors", diffusers_controlnet_model(tiny.mmdit, joint, joint=True, depth=1)),
        "inpainting": (folder / "inpainting.safetensors",
                       diffusers_controlnet_model(tiny.mmdit, inpainting, joint=True, depth=1, extra_channels=1)),
        "stability": (folder / "depth.safetensors",
                      diffusers_controlnet_model(tiny.mmdit, stability_to_diffusers(stability), joint=False, depth=1)),
    }


@pytest.mark.parametrize("net, start, end", [("joint", 0.0, 1.0), ("joint", 0.34, 1.0), ("stability", 0.0, 0.67)])
def test_matches_diffusers_controlnet_pipeline(tiny, files, nets, control_image, net, start, end):
    from diffusers import StableDiffusion3ControlNetPipeline

    path, model = nets[net]
    base = diffusers_pipeline(tiny)
    theirs = StableDiffusion3ControlNetPipeline(**{k: v for k, v in base.components.items()
                                                   if k not in ("image_encoder", "feature_extractor")}, controlnet=model)
    ours = StableDiffusion3(files, reference="diffusers")
    result = ours.generate("a cat", "blurry", height=HEIGHT, width=WIDTH, steps=STEPS, cfg=4.0, seed=SEED,
                           latents=LATENTS, quiet=True,
                           control=[ControlInput(path, control_image, scale=0.8, start=start, end=end)])
    torch.manual_seed(SEED)  # diffusers' control-image draw comes from the global RNG
    want = theirs(prompt="a cat", negative_prompt="blurry", height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
                  guidance_scale=4.0, latents=LATENTS, control_image=Image.open(control_image),
                  controlnet_conditioning_scale=0.8, control_guidance_start=start, control_guidance_end=end,
                  max_sequence_length=256, output_type="latent").images
    plain = ours.generate("a cat", "blurry", height=HEIGHT, width=WIDTH, steps=STEPS, cfg=4.0, seed=SEED,
                          latents=LATENTS, quiet=True)
    assert (result.latents - plain.latents).abs().max() > 1e-2  # the ControlNet does change the result
    assert (result.latents - want).abs().max() <= 1e-4


def test_bad_inputs_are_refused_before_any_load(files, nets, control_image, tmp_path):
    loaded = []
    pipe = StableDiffusion3(files, on_load=lambda name, module: loaded.append(name))
    path = nets["joint"][0]
    cases = [
        (ControlInput(path, control_image, start=0.5, end=0.5), "`start` must be below `end`"),
        (ControlInput(path, tmp_path / "missing.png"), "`control_image` .*missing.png: file not found"),
        (ControlInput(tmp_path / "none.safetensors", control_image), "a .safetensors file is needed"),
        (ControlInput(path, control_image, scale=float("nan")), "must be finite numbers"),
    ]
    for control, message in cases:
        with pytest.raises(ConfigurationError, match=message):
            pipe.generate("a cat", height=HEIGHT, width=WIDTH, steps=2, cfg=4.0, control=[control], quiet=True)
    assert loaded == []


def test_stability_nets_bring_stabilitys_settings(files, nets, control_image):
    pipe = StableDiffusion3(files)
    stability = [ControlInput(nets["stability"][0], control_image)]
    assert pipe.check("a cat", height=HEIGHT, width=WIDTH, control=stability).largest.steps == 60
    work = pipe.check("a cat", height=HEIGHT, width=WIDTH, control=stability, steps=2, cfg=2.0)
    assert (work.largest.steps, work.largest.cfg, work.largest.shift) == (2, 2.0, 3.0)  # what the user set wins
    joint = [ControlInput(nets["joint"][0], control_image)]
    with pytest.raises(ConfigurationError, match="give `steps`"):  # no Stability defaults; this pipe has no variant
        pipe.check("a cat", height=HEIGHT, width=WIDTH, control=joint)


def test_a_lora_never_touches_a_controlnet(files, nets, control_image, tmp_path):
    """A LoRA applies to the models it names; a ControlNet loaded beside them is left alone."""
    from sd3.mmdit.controlnet_loading import load_controlnet

    seen = {}
    pipe = StableDiffusion3(files, on_load=lambda name, module: seen.setdefault(name, module))
    d = pipe.mmdit_config.hidden_size
    factors = {"lora_unet_joint_blocks_0_x_block_attn_proj.lora_down.weight": torch.randn(2, d) * 0.1,
               "lora_unet_joint_blocks_0_x_block_attn_proj.lora_up.weight": torch.randn(d, 2) * 0.1}
    save_file(factors, str(tmp_path / "style.safetensors"))
    pipe.add_lora(tmp_path / "style.safetensors")
    pipe.generate("a cat", height=HEIGHT, width=WIDTH, steps=2, cfg=4.0, quiet=True,
                  control=[ControlInput(nets["joint"][0], control_image)])
    name = next(n for n in seen if n.startswith("controlnet:"))
    fresh = load_controlnet(nets["joint"][0], pipe.mmdit_config)
    assert all(torch.equal(a, b) for a, b in zip(seen[name].state_dict().values(), fresh.state_dict().values()))


def test_generate_many_renders_what_generate_renders(files, nets, control_image):
    pipe = StableDiffusion3(files, keep="stage")
    control = [ControlInput(nets["joint"][0], control_image, scale=0.8)]
    settings = dict(height=HEIGHT, width=WIDTH, steps=2, cfg=4.0, seed=3, quiet=True, control=control)
    one = pipe.generate(["a cat", "a dog"], **settings)
    many = list(pipe.generate_many(["a cat", "a dog"], **settings))
    # generate encodes both prompts in one pass, generate_many each batch alone: float32 rounding only
    for m, image in zip(many, one.images):
        assert np.abs(np.asarray(m.image, dtype=np.int16) - np.asarray(image, dtype=np.int16)).max() <= 1


def test_matches_diffusers_inpainting_controlnet_pipeline(tiny, files, nets, control_image, tmp_path):
    """alimama's kind: the image with the repainted area black, encoded with the VAE's shift (one draw
    for both CFG halves), and the kept area as a 17th channel; diffusers' pooled vector is zero."""
    from diffusers import StableDiffusion3ControlNetInpaintingPipeline

    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    mask.paste(255, (8, 16, 40, 48))
    mask.save(tmp_path / "mask.png")
    path, model = nets["inpainting"]
    base = diffusers_pipeline(tiny)
    theirs = StableDiffusion3ControlNetInpaintingPipeline(
        **{k: v for k, v in base.components.items() if k not in ("image_encoder", "feature_extractor")}, controlnet=model)
    ours = StableDiffusion3(files, reference="diffusers")
    result = ours.generate("a cat", "blurry", height=HEIGHT, width=WIDTH, steps=STEPS, cfg=4.0, seed=SEED,
                           latents=LATENTS, quiet=True,
                           control=[ControlInput(path, control_image, scale=0.8, mask=tmp_path / "mask.png")])
    torch.manual_seed(SEED)
    want = theirs(prompt="a cat", negative_prompt="blurry", height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
                  guidance_scale=4.0, latents=LATENTS, control_image=Image.open(control_image),
                  control_mask=Image.open(tmp_path / "mask.png"), controlnet_conditioning_scale=0.8,
                  max_sequence_length=256, output_type="latent").images
    assert (result.latents - want).abs().max() <= 1e-4
    with pytest.raises(ConfigurationError, match="is an inpainting ControlNet: give its `control_mask`"):
        ours.generate("a cat", height=HEIGHT, width=WIDTH, steps=2, cfg=4.0, control=[ControlInput(path, control_image)])
    with pytest.raises(ConfigurationError, match="takes no `control_mask`"):
        ours.generate("a cat", height=HEIGHT, width=WIDTH, steps=2, cfg=4.0,
                      control=[ControlInput(nets["joint"][0], control_image, mask=tmp_path / "mask.png")])


@pytest.mark.parametrize("keep, stays", [("stage", False), ("all", True)])
def test_keep_applies_to_controlnets_and_the_memory_plan_counts_them(files, nets, control_image, keep, stays):
    pipe = StableDiffusion3(files, keep=keep)
    control = [ControlInput(nets["joint"][0], control_image)]
    pipe.generate("a cat", height=HEIGHT, width=WIDTH, steps=2, cfg=4.0, quiet=True, control=control)
    name = control[0].name
    assert pipe.memory.weights[name] == nets["joint"][0].stat().st_size - _header_bytes(nets["joint"][0])
    assert (name in pipe.models) == stays and ("mmdit" in pipe.models) == stays


def _header_bytes(path) -> int:
    with open(path, "rb") as file:
        return 8 + int.from_bytes(file.read(8), "little")


def test_two_nets_match_diffusers_multi_controlnet(tiny, files, nets, control_image, tmp_path):
    """Summed residuals, and under `diffusers` the nets' posterior draws one after another from one RNG."""
    from diffusers import StableDiffusion3ControlNetPipeline

    second = diffusers_controlnet(tiny.mmdit, 1, seed=8)
    save_file(second, str(tmp_path / "second.safetensors"))
    models = [nets["joint"][1], diffusers_controlnet_model(tiny.mmdit, second, joint=True, depth=1)]
    base = diffusers_pipeline(tiny)
    theirs = StableDiffusion3ControlNetPipeline(**{k: v for k, v in base.components.items()
                                                   if k not in ("image_encoder", "feature_extractor")}, controlnet=models)
    ours = StableDiffusion3(files, reference="diffusers")
    result = ours.generate("a cat", "blurry", height=HEIGHT, width=WIDTH, steps=STEPS, cfg=4.0, seed=SEED, latents=LATENTS,
                           quiet=True, control=[ControlInput(nets["joint"][0], control_image, scale=0.8),
                                                ControlInput(tmp_path / "second.safetensors", control_image, scale=0.5)])
    torch.manual_seed(SEED)
    image = Image.open(control_image)
    want = theirs(prompt="a cat", negative_prompt="blurry", height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
                  guidance_scale=4.0, latents=LATENTS, control_image=[image, image],
                  controlnet_conditioning_scale=[0.8, 0.5], control_guidance_start=[0.0, 0.0],
                  control_guidance_end=[1.0, 1.0], max_sequence_length=256, output_type="latent").images
    assert (result.latents - want).abs().max() <= 1e-4


def test_a_paused_stream_and_a_call_in_between_keep_their_controlnets(files, nets, control_image):
    pipe = StableDiffusion3(files, keep="stage")
    settings = dict(height=HEIGHT, width=WIDTH, steps=2, cfg=4.0, seed=3, quiet=True)
    stream = pipe.generate_many(["a cat", "a dog"], chunk_size=1,
                                control=[ControlInput(nets["joint"][0], control_image)], **settings)
    first = next(stream)
    pipe.generate("a bird", control=[ControlInput(nets["stability"][0], control_image)], **settings)
    pipe.generate("a fish", **settings)
    assert [first.index, next(stream).index] == [0, 1]


def test_joint_nets_get_no_residual_after_the_last_block(files, nets, control_image):
    from sd3.sampling import Reference
    from sd3.sampling.control import after_last_block, check_inputs

    pipe = StableDiffusion3(files)
    mmdit = pipe.components.architectures()["mmdit"]
    joint, stability = (check_inputs([ControlInput(nets[n][0], control_image)], mmdit) for n in ("joint", "stability"))
    assert after_last_block(Reference.named("stability"), stability)  # Stability's code adds it
    assert not after_last_block(Reference.named("stability"), joint)  # diffusers' nets never had it
    assert not after_last_block(Reference.named("diffusers"), stability)


def test_sizes_a_controlnet_cannot_take_are_refused_before_any_load(tiny, files, nets, control_image, tmp_path):
    loaded = []
    pipe = StableDiffusion3(files, on_load=lambda name, module: loaded.append(name))
    with pytest.raises(ConfigurationError, match="`control_image` as a tensor must be 64x48 pixels"):
        pipe.generate("a cat", height=HEIGHT, width=WIDTH, steps=2, cfg=4.0, quiet=True,
                      control=[ControlInput(nets["joint"][0], torch.rand(3, 10, 10))])
    small = tmp_path / "small_table.safetensors"
    save_file(diffusers_controlnet(replace(tiny.mmdit, pos_embed_max_size=2), 1), str(small))
    with pytest.raises(ConfigurationError, match="small_table.safetensors covers images up to 32x32 pixels"):
        pipe.generate("a cat", height=HEIGHT, width=WIDTH, steps=2, cfg=4.0, quiet=True,
                      control=[ControlInput(small, control_image)])
    assert loaded == []
