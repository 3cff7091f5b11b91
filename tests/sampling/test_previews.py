"""Each step's view of the model (x0, velocity) reaches `on_step`, and previews turn it into pictures."""

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from sd3 import ConfigurationError, StableDiffusion3
from sd3.sampling import GuidedVelocity, Reference, initial_noise
from sd3.sampling.previews import LATENT_RGB_FACTORS, Preview, project
from sd3.sampling.samplers import Step, euler
from sd3.testing.tiny.taesd import taesd_state_dict
from sd3.vae import load_taesd, to_pil

ARGS = dict(height=32, width=48, steps=3, cfg=4.0, quiet=True)


@pytest.fixture(scope="module")
def taesd_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("taesd") / "diffusion_pytorch_model.safetensors"
    save_file(taesd_state_dict(seed=2), str(path))
    return path


@pytest.fixture(scope="module")
def with_taesd(files, taesd_file):
    return dataclasses.replace(files, taesd=taesd_file)


@pytest.mark.parametrize("reference, dtype", [("default", "float32"), ("diffusers", "float32"),
                                              ("stability", "float32"), ("candle", "bfloat16")])
@pytest.mark.parametrize("sampler_name", ["euler", "dpmpp_2m"])
def test_x0_is_the_latents_minus_sigma_times_the_velocity_the_model_gives(files, reference, dtype, sampler_name):
    """Candle in bfloat16 rounds the latents after each step: x0 is still from the step's start."""
    pipe = StableDiffusion3(files, keep="all", reference=reference, dtype=dtype)
    steps: list[Step] = []
    pipe.generate("a cat", "blurry", seed=3, sampler_name=sampler_name, on_step=steps.append, **ARGS)
    ref = Reference.named(reference)
    velocity = GuidedVelocity(pipe.models.models["mmdit"], pipe.encode("a cat", "blurry"), cfg=4.0, slg=None, steps=3,
                              uncond_first=ref.uncond_first, uncond_at_cfg_one=ref.uncond_at_cfg_one)
    before = initial_noise([3], 16, 4, 6)
    for k, step in enumerate(steps):
        assert (step.step, step.steps, step.indices) == (k + 1, 3, (0,))
        with torch.no_grad():
            v = velocity(before, torch.tensor(step.sigma), k)
        assert (step.velocity - v).abs().max() <= 1e-5
        assert (step.x0 - (before - step.sigma * v)).abs().max() <= 1e-5
        before = step.latents
    assert [s.sigma_next for s in steps[:-1]] == [s.sigma for s in steps[1:]] and steps[-1].sigma_next == 0.0


def test_three_argument_callbacks_still_work(files):
    pipe = StableDiffusion3(files, keep="all")
    old, new = [], []
    pipe.generate("a cat", seed=1, on_step=lambda i, n, x: old.append((i, n, x.clone())), **ARGS)
    pipe.generate("a cat", seed=1, on_step=new.append, **ARGS)
    assert [(i, n) for i, n, _ in old] == [(s.step, s.steps) for s in new] == [(1, 3), (2, 3), (3, 3)]
    assert all(torch.equal(x, s.latents) for (_, _, x), s in zip(old, new))


def test_the_proj_preview_is_the_factors_applied_by_hand():
    x0 = torch.randn(1, 16, 3, 5, generator=torch.Generator().manual_seed(0))
    preview = Preview("proj")
    preview(Step(1, 1, 1.0, 0.0, x0, x0, x0, (0,)))
    by_hand = sum(x0[:, c, None] * torch.tensor(LATENT_RGB_FACTORS[c])[None, :, None, None] for c in range(16))
    assert preview.frames[0][0].tobytes() == to_pil(by_hand)[0].tobytes() and preview.sigmas[0] == [1.0]
    # Rows typed from Stability's sd3_impls.py (SD3LatentFormat.decode_latent_to_preview): a unit latent in
    # channel c is row c of its table.
    for channel, rgb in ((0, (-0.0645, 0.0177, 0.1052)), (2, (0.1848, 0.0762, 0.0360)), (10, (0.1106, 0.1171, 0.1220)),
                         (15, (-0.1418, -0.1457, -0.1259))):
        unit = torch.zeros(1, 16, 1, 1)
        unit[0, channel] = 1
        assert project(unit).flatten().tolist() == pytest.approx(rgb, abs=1e-7)


def test_preview_paths_and_new_style_callbacks_with_defaults(tmp_path):
    assert Preview(path=f"{tmp_path}/frames/").folder == tmp_path / "frames"
    assert Preview(path=tmp_path / "live.png").file == tmp_path / "live.png"
    for bad in (tmp_path / "frames", tmp_path / "no-such-folder" / "a.png", tmp_path / "a.psd"):
        with pytest.raises(ConfigurationError, match="`path` "):
            Preview(path=bad)
    seen = []

    def callback(step, log=None, verbose=False):  # one required parameter: a Step, not (step, steps, latents)
        seen.append(type(step))

    euler(lambda x, s, i: x, torch.ones(1), torch.tensor([1.0, 0.5, 0.0]), on_step=callback)
    assert seen == [Step, Step]


def test_generate_many_gives_one_preview_per_image_and_every_n_steps(files, tmp_path):
    pipe = StableDiffusion3(files, keep="all")
    kept, folder = Preview("proj", every=2), tmp_path / "frames"
    list(pipe.generate_many(["a cat", "a dog", "a red chair"], batch_size=2, on_step=kept, **ARGS))
    assert sorted(kept.frames) == [0, 1, 2] and all(len(frames) == 2 for frames in kept.frames.values())  # 2 and 3
    assert kept.frames[0][0].size == (6, 4)  # one pixel per latent pixel
    list(pipe.generate_many(["a cat", "a dog"], on_step=Preview("proj", path=f"{folder}/"), **ARGS))
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:05d}-{s:03d}.png" for i in range(2) for s in (1, 2, 3)]
    pipe.generate(["a cat", "a dog"], on_step=Preview("proj", path=tmp_path / "preview.png"), **ARGS)
    assert (tmp_path / "preview.png").is_file() and (tmp_path / "preview-1.png").is_file()


def test_taesd_and_vae_previews_are_lent_their_model(with_taesd, taesd_file):
    loaded = []
    pipe = StableDiffusion3(with_taesd, keep="stage", on_load=lambda name, module: loaded.append(name))
    tiny, full = Preview("taesd"), Preview("vae")
    pipe.generate("a cat", on_step=tiny, **ARGS)
    pipe.generate("a cat", on_step=full, **ARGS)
    assert tiny.frames[0][0].size == full.frames[0][0].size == (48, 32) and len(tiny.frames[0]) == 3
    assert "taesd" in loaded and pipe.models.models == {} and tiny._decoder is None  # lent, then given back
    with torch.no_grad():  # at the last step σ_next = 0: x0 is the final latents, decoded by the TAESD alone
        latents = pipe.generate("a cat", on_step=None, **ARGS).latents
        alone = to_pil(load_taesd(taesd_file).decode(latents))[0]
    assert tiny.frames[0][-1].tobytes() == alone.tobytes()


def test_a_taesd_preview_or_decoder_without_its_file_is_refused_before_anything_loads(files):
    loaded = []
    pipe = StableDiffusion3(files, on_load=lambda name, module: loaded.append(name))
    with pytest.raises(ConfigurationError, match=r'taesd preview needs a TAESD3 file: give `files\["taesd"\]`'):
        pipe.generate("a cat", on_step=Preview("taesd"), **ARGS)
    with pytest.raises(ConfigurationError, match=r'needs a TAESD3 file'):
        next(pipe.generate_many(["a cat"], on_step=Preview("taesd"), **ARGS))
    with pytest.raises(ConfigurationError, match=r'`decoder="taesd3"` needs a TAESD3 file'):
        StableDiffusion3(files, decoder="taesd3")
    assert loaded == []
    with pytest.raises(ConfigurationError, match="unknown preview `kind` 'tae'"):
        Preview("tae")


def test_taesd3_decodes_the_final_images(with_taesd, taesd_file):
    pipe = StableDiffusion3(with_taesd, keep="all", decoder="taesd3")
    result = pipe.generate("a cat", seed=2, **ARGS)
    with torch.no_grad():
        want = to_pil(load_taesd(taesd_file).decode(result.latents))
    assert result.images[0].tobytes() == want[0].tobytes() and "vae" not in pipe.models.models


def test_a_staged_stream_loads_each_decoder_once_per_chunk(with_taesd):
    loaded = []
    pipe = StableDiffusion3(with_taesd, keep="stage", decoder="taesd3", on_load=lambda name, m: loaded.append(name))
    list(pipe.generate_many(["a cat", "a dog", "a red chair"], chunk_size=3, on_step=Preview("vae"), **ARGS))
    assert loaded.count("taesd") == 1 and loaded.count("vae") == 1 and loaded.count("mmdit") == 1
    assert pipe.models.models == {}
