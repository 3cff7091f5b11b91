"""The VAE's renaming map: our diffusers-style module names -> the checkpoint's original names.

Mirrors Candle's `sd3_vae_vb_rename` (huggingface/candle@f7ed457
candle-examples/examples/stable-diffusion-3/vae.rs). Read it as a table: every rule below turns a
diffusers-style piece of a name into the original (LDM) piece the SD3 checkpoints use. Example:
`decoder.up_blocks.0.resnets.2.conv_shortcut.weight` -> `decoder.up.3.block.2.nin_shortcut.weight`.
"""

from __future__ import annotations

import re

# Whole name parts, renamed wherever they occur.
PART_RENAMES = {
    "down_blocks": "down",
    "downsamplers.0": "downsample",
    "upsamplers.0": "upsample",
    "resnets": "block",
    "conv_shortcut": "nin_shortcut",
    "attentions.0": "attn_1",
    "group_norm": "norm",
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
    "conv_norm_out": "norm_out",
}
# Decoder up blocks run from the smallest resolution up, but the checkpoint numbers them from the
# largest: up_blocks.k -> up.(n - 1 - k). The mid block's two resnets are block_1 and block_2.
_UP_BLOCK = re.compile(r"(?<![^.])up_blocks\.(\d+)(?![^.])")
_MID_RESNET = re.compile(r"(?<![^.])mid_block\.resnets\.(\d+)(?![^.])")


def checkpoint_name(name: str, num_blocks: int = 4) -> str:
    """The checkpoint's name for the model parameter `name` of a VAE with `num_blocks` levels."""
    name = _UP_BLOCK.sub(lambda m: f"up.{num_blocks - 1 - int(m.group(1))}", name)
    name = _MID_RESNET.sub(lambda m: f"mid.block_{int(m.group(1)) + 1}", name)
    name = re.sub(r"(?<![^.])mid_block(?![^.])", "mid", name)
    for old, new in PART_RENAMES.items():
        name = re.sub(rf"(?<![^.]){re.escape(old)}(?![^.])", new, name)
    return name
