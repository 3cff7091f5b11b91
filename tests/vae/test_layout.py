"""The full-size VAE has exactly the real checkpoint's names and shapes, through the renaming map."""

import pytest
import torch

from sd3.testing.tiny.random import MetaTensors
from sd3.testing.tiny.vae import diffusers_config, vae_state_dict
from sd3.vae import AutoEncoderKL, VAEConfig, checkpoint_name

SD3_CHANNELS = (128, 256, 512, 512)


def _renamed_shapes(model: AutoEncoderKL) -> dict[str, tuple[int, ...]]:
    return {checkpoint_name(k): tuple(v.shape) for k, v in model.state_dict().items()}


def test_full_size_names_and_shapes_are_the_checkpoints():
    with torch.device("meta"):
        model = AutoEncoderKL(VAEConfig.sd3())
    real = vae_state_dict(SD3_CHANNELS, prefix="", tensors=MetaTensors())
    assert _renamed_shapes(model) == {k: tuple(v.shape) for k, v in real.items()}


def test_full_size_matches_the_diffusers_sd3_vae():
    """Our renamed names, through diffusers' converter, are what diffusers' SD3 VAE expects."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    with torch.device("meta"):
        ours = AutoEncoderKL(VAEConfig.sd3())
        config = diffusers_config(SD3_CHANNELS)
        ref = AutoencoderKL(**config)
    checkpoint = {"first_stage_model." + checkpoint_name(k): v for k, v in ours.state_dict().items()}
    converted = convert_ldm_vae_checkpoint(checkpoint, config)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def test_config_inferred_from_the_real_layout():
    real = vae_state_dict(SD3_CHANNELS, prefix="", tensors=MetaTensors())
    assert VAEConfig.from_state_dict(real) == VAEConfig.sd3()


@pytest.mark.parametrize(
    "model_name, checkpoint",
    [
        ("encoder.down_blocks.1.resnets.0.conv_shortcut.weight", "encoder.down.1.block.0.nin_shortcut.weight"),
        ("encoder.down_blocks.0.downsamplers.0.conv.bias", "encoder.down.0.downsample.conv.bias"),
        ("encoder.conv_norm_out.weight", "encoder.norm_out.weight"),
        ("decoder.up_blocks.0.resnets.2.conv1.weight", "decoder.up.3.block.2.conv1.weight"),
        ("decoder.up_blocks.3.resnets.0.conv_shortcut.bias", "decoder.up.0.block.0.nin_shortcut.bias"),
        ("decoder.up_blocks.2.upsamplers.0.conv.weight", "decoder.up.1.upsample.conv.weight"),
        ("decoder.mid_block.resnets.0.norm1.weight", "decoder.mid.block_1.norm1.weight"),
        ("decoder.mid_block.resnets.1.conv2.bias", "decoder.mid.block_2.conv2.bias"),
        ("decoder.mid_block.attentions.0.group_norm.weight", "decoder.mid.attn_1.norm.weight"),
        ("decoder.mid_block.attentions.0.query.weight", "decoder.mid.attn_1.q.weight"),
        ("decoder.mid_block.attentions.0.key.bias", "decoder.mid.attn_1.k.bias"),
        ("decoder.mid_block.attentions.0.value.weight", "decoder.mid.attn_1.v.weight"),
        ("decoder.mid_block.attentions.0.proj_attn.weight", "decoder.mid.attn_1.proj_out.weight"),
        ("decoder.conv_in.weight", "decoder.conv_in.weight"),
    ],
)
def test_renaming_examples(model_name, checkpoint):
    """The same correspondences as Candle's `sd3_vae_vb_rename`."""
    assert checkpoint_name(model_name) == checkpoint
