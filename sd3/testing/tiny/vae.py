"""Tiny VAE checkpoints in the original (LDM) layout of `first_stage_model.*`, and the diffusers reference."""

from __future__ import annotations

import torch

from sd3.testing.tiny.random import RandomTensors

# Four levels as in SD3 (8x downsampling), narrow channels (GroupNorm needs multiples of 32).
TINY_CHANNELS = (32, 32, 64, 64)
LATENT = 16


def vae_state_dict(
    channels: tuple[int, ...] = TINY_CHANNELS,
    layers: int = 2,
    seed: int = 0,
    prefix: str = "first_stage_model.",
    tensors: RandomTensors | None = None,
) -> dict[str, torch.Tensor]:
    """Every VAE tensor, named as in the official SD3 single-file checkpoints.

    `tensors=MetaTensors()` gives shapes only, for the full-size layout.
    """
    r = tensors or RandomTensors(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, out: int, inp: int, k: int) -> None:
        sd[name + ".weight"] = r.weight(out, inp, k, k)
        sd[name + ".bias"] = r.bias(out)

    def norm(name: str, c: int) -> None:
        sd[name + ".weight"] = r.norm_weight(c)
        sd[name + ".bias"] = r.bias(c)

    def resnet(name: str, inp: int, out: int) -> None:
        norm(name + ".norm1", inp)
        conv(name + ".conv1", out, inp, 3)
        norm(name + ".norm2", out)
        conv(name + ".conv2", out, out, 3)
        if inp != out:
            conv(name + ".nin_shortcut", out, inp, 1)

    def mid(name: str, c: int) -> None:
        resnet(name + ".block_1", c, c)
        norm(name + ".attn_1.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.attn_1.{part}", c, c, 1)  # stored as 1x1 convolutions
        resnet(name + ".block_2", c, c)

    n = len(channels)
    conv("encoder.conv_in", channels[0], 3, 3)
    for i in range(n):
        for j in range(layers):
            resnet(f"encoder.down.{i}.block.{j}", channels[max(i - 1, 0)] if j == 0 else channels[i], channels[i])
        if i < n - 1:
            conv(f"encoder.down.{i}.downsample.conv", channels[i], channels[i], 3)
    mid("encoder.mid", channels[-1])
    norm("encoder.norm_out", channels[-1])
    conv("encoder.conv_out", 2 * LATENT, channels[-1], 3)

    conv("decoder.conv_in", channels[-1], LATENT, 3)
    mid("decoder.mid", channels[-1])
    for i in range(n):  # checkpoint order: up.0 is the full-resolution level, decoded last
        for j in range(layers + 1):
            inp = (channels[min(i + 1, n - 1)]) if j == 0 else channels[i]
            resnet(f"decoder.up.{i}.block.{j}", inp, channels[i])
        if i > 0:
            conv(f"decoder.up.{i}.upsample.conv", channels[i], channels[i], 3)
    norm("decoder.norm_out", channels[0])
    conv("decoder.conv_out", 3, channels[0], 3)
    return {prefix + k: v for k, v in sd.items()}


def diffusers_config(channels: tuple[int, ...] = TINY_CHANNELS, layers: int = 2) -> dict:
    """The explicit `AutoencoderKL` config of the SD3 VAE with these channels (no hub access)."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        block_out_channels=list(channels),
        layers_per_block=layers,
        latent_channels=LATENT,
        norm_num_groups=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=1.5305,
        shift_factor=0.0609,
    )


def diffusers_vae(state_dict: dict[str, torch.Tensor], channels: tuple[int, ...] = TINY_CHANNELS):
    """diffusers' `AutoencoderKL`, loaded strictly through `convert_ldm_vae_checkpoint`."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = diffusers_config(channels)
    model = AutoencoderKL(**config)
    model.load_state_dict(convert_ldm_vae_checkpoint(state_dict, config), strict=True)
    return model.eval()
