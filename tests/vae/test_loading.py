"""Loading the VAE from each layout, and the errors for wrong files and inputs."""

import pytest
import torch
from safetensors.torch import save_file

from sd3.errors import ModelLoadingError, VAEDecodingError
from sd3.testing.tiny.mmdit import SD3_LIKE, mmdit_state_dict
from sd3.testing.tiny.vae import TINY_CHANNELS, vae_state_dict
from sd3.vae import VAEConfig, load_vae


@pytest.fixture(scope="module")
def state_dict():
    return vae_state_dict(seed=2)


def test_standalone_and_all_in_one_layouts_load_the_same_weights(tmp_path, state_dict):
    standalone = tmp_path / "vae.safetensors"
    save_file({k.removeprefix("first_stage_model."): v for k, v in state_dict.items()}, str(standalone))
    all_in_one = tmp_path / "sd3.safetensors"
    save_file({**state_dict, **mmdit_state_dict(SD3_LIKE)}, str(all_in_one))
    a, b = load_vae(standalone), load_vae(all_in_one)
    z = torch.randn(1, 16, 4, 4)
    assert torch.equal(a.decode(z), b.decode(z))
    assert a.config == VAEConfig(block_out_channels=TINY_CHANNELS)


def test_bfloat16(state_dict):
    vae = load_vae(state_dict, dtype="bf16")
    assert vae.dtype == torch.bfloat16
    assert vae.decode(torch.randn(1, 16, 4, 4)).dtype == torch.bfloat16


def test_missing_key_is_named_both_ways(state_dict):
    broken = dict(state_dict)
    del broken["first_stage_model.decoder.up.3.block.0.conv1.weight"]
    with pytest.raises(ModelLoadingError) as info:
        load_vae(broken)
    assert "decoder.up.3.block.0.conv1.weight (model: decoder.up_blocks.0.resnets.0.conv1.weight)" in str(info.value)


def test_unexpected_key(state_dict):
    extra = {**state_dict, "first_stage_model.quant_conv.weight": torch.ones(32, 32, 1, 1)}
    with pytest.raises(ModelLoadingError, match=r"1 unexpected key \(quant_conv.weight\)"):
        load_vae(extra)


def test_shape_mismatch(state_dict):
    key = "first_stage_model.decoder.mid.attn_1.q.weight"
    with pytest.raises(ModelLoadingError, match=r"decoder.mid.attn_1.q.weight: checkpoint \(64, 64\) vs model \(64, 64, 1, 1\)"):
        load_vae({**state_dict, key: torch.ones(64, 64)})


def test_file_without_a_vae(tmp_path):
    path = tmp_path / "mmdit.safetensors"
    save_file(mmdit_state_dict(SD3_LIKE), str(path))
    with pytest.raises(ModelLoadingError, match="not an SD3 VAE checkpoint"):
        load_vae(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadingError, match="not found"):
        load_vae(tmp_path / "vae.safetensors")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda vae: vae.decode(torch.randn(1, 4, 8, 8)), r"latents must be \(b, 16, height, width\)"),
        (lambda vae: vae.encode(torch.randn(1, 3, 30, 32)), "multiples of 8"),
        (lambda vae: vae.encode(torch.randn(3, 32, 32)), r"images must be \(b, 3, height, width\)"),
    ],
)
def test_bad_inputs(state_dict, call, message):
    with pytest.raises(VAEDecodingError, match=message):
        call(load_vae(state_dict))


def test_nan_latents_are_reported_with_their_likely_cause(state_dict):
    from sd3.vae import to_uint8

    with pytest.raises(VAEDecodingError, match="float16"):
        to_uint8(torch.full((1, 3, 8, 8), float("nan")))
