"""Every user value is checked once, before any model loads, and one condition raises one exception type."""

import pytest
import torch

from sd3 import ConfigurationError, ModelLoadingError, SkipLayerGuidanceConfig, StableDiffusion3
from sd3.sampling import explicit_sigmas, sigmas
from sd3.sampling.samplers import sampler
from tests.lora.test_lora import kohya_lora

ARGS = dict(height=32, width=48, steps=2, cfg=4.0, quiet=True)


@pytest.fixture
def watched(files):
    loaded = []
    return StableDiffusion3(files, keep="all", on_load=lambda name, module: loaded.append(name)), loaded


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(slg=SkipLayerGuidanceConfig(layers=(1, 2))), r"SLG layers \[1, 2\] do not exist: this MMDiT has blocks 0..1"),
        (dict(height=256), "`height` 256 exceeds this checkpoint's limit of 128 pixels"),
        (dict(tile_size=31), r"`tile_size` must be at least 32 \(twice the 16 latent pixels"),
        (dict(steps=0), "`steps` must be at least 1"),
        (dict(shift=0.0), "`shift` must be positive"),
        (dict(sampler_name="heun"), "unknown `sampler_name` 'heun'"),
        (dict(sigmas=[0.5, 0.7]), "`sigmas` must decrease strictly"),
        (dict(init_image=torch.rand(1, 3, 32, 48), strength=0.0), r"`strength` must be in \(0, 1\]"),
        (dict(strength=0.5), "`strength` needs an `init_image`"),
        (dict(latents=torch.zeros(2, 16, 4, 6)), r"initial `latents` must be \(1 or 1, 16, 4, 6\)"),
    ],
)
def test_a_bad_request_is_refused_before_anything_loads(watched, settings, message):
    pipe, loaded = watched
    with pytest.raises(ConfigurationError, match=message):
        pipe.generate("a cat", **{**ARGS, **settings})
    if "latents" not in settings:  # generate_many draws every start from the seeds
        with pytest.raises(ConfigurationError, match=message):
            next(pipe.generate_many(["a cat"], **{**ARGS, **settings}))
    assert loaded == []


def test_the_variants_slg_layers_are_checked_against_the_checkpoint(files):
    loaded = []
    pipe = StableDiffusion3(files, variant="3.5-medium", on_load=lambda name, module: loaded.append(name))
    with pytest.raises(ConfigurationError, match=r"SLG layers \[7, 8, 9\] do not exist: this MMDiT has blocks 0..1"):
        pipe.generate("a cat", slg=True, **ARGS)  # 3.5-medium's SLG skips blocks 7-9; the tiny MMDiT has 2
    assert loaded == []


def test_a_lora_that_does_not_fit_is_refused_when_added(watched, tiny, tmp_path):
    pipe, loaded = watched
    kohya_lora(tiny, tmp_path / "typo.safetensors", misspell="lora_unet_joint_blocks_0_context_block_mlp_fc_1")
    with pytest.raises(ModelLoadingError, match="lora_unet_joint_blocks_0_context_block_mlp_fc_1"):
        pipe.add_lora(tmp_path / "typo.safetensors")
    assert loaded == [] and pipe.loras == []


@pytest.mark.parametrize(
    "low_level, settings, message",
    [
        (lambda: sigmas("candle", 0), dict(steps=0), "`steps` must be at least 1"),
        (lambda: sigmas("candle", 4, -1.0), dict(shift=-1.0), "`shift` must be positive"),
        (lambda: sampler("heun"), dict(sampler_name="heun"), "unknown `sampler_name` 'heun'"),
        (lambda: explicit_sigmas([0.5, 0.7]), dict(sigmas=[0.5, 0.7]), "`sigmas` must decrease strictly"),
    ],
)
def test_one_condition_one_exception_type(files, low_level, settings, message):
    """The building blocks and the pipeline refuse a value with the same type and words."""
    pipe = StableDiffusion3(files)
    for check in (low_level, lambda: pipe.options(height=32, width=32, cfg=4.0, **{"steps": 2, **settings})):
        with pytest.raises(ConfigurationError, match=message):
            check()
