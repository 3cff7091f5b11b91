"""Tiny SD3 ControlNet files in the real layouts, and diffusers' model over the same tensors.

The key lists are typed out from Stability's SD3.5-large ControlNet files (dit_embedder.py's
modules, embedders under diffusers' names, as sd3_infer.py's `CONTROLNET_MAP` reads them) and from
diffusers' `SD3ControlNetModel`, not derived from our modules. Every tensor is random and non-zero,
`pos_embed_input` and `controlnet_blocks` included (training starts them at zero, which would hide
every fault downstream).
"""

from __future__ import annotations

import torch

from sd3.testing.tiny.mmdit import HEAD_DIM, TinyMMDiT
from sd3.testing.tiny.random import RandomTensors

# A base with twice as many blocks as its ControlNets have, as SD3.5-large's 38 and their 19.
CONTROL_BASE = TinyMMDiT(depth=4, heads=2, qk_norm=True)


def _embedders(r: RandomTensors, d: int, p: int, pooled: int, cond_channels: int) -> dict[str, torch.Tensor]:
    return {
        "pos_embed_input.proj.weight": r.weight(d, cond_channels, p, p),
        "pos_embed_input.proj.bias": r.bias(d),
        "time_text_embed.timestep_embedder.linear_1.weight": r.weight(d, 256),
        "time_text_embed.timestep_embedder.linear_1.bias": r.bias(d),
        "time_text_embed.timestep_embedder.linear_2.weight": r.weight(d, d),
        "time_text_embed.timestep_embedder.linear_2.bias": r.bias(d),
        "time_text_embed.text_embedder.linear_1.weight": r.weight(d, pooled),
        "time_text_embed.text_embedder.linear_1.bias": r.bias(d),
        "time_text_embed.text_embedder.linear_2.weight": r.weight(d, d),
        "time_text_embed.text_embedder.linear_2.bias": r.bias(d),
    }


def _linear(r: RandomTensors, name: str, out: int, inp: int) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": r.weight(out, inp), f"{name}.bias": r.bias(out)}


def stability_controlnet(base: TinyMMDiT, depth: int, *, control_type: int = 1, two_b: bool = False,
                         seed: int = 0, tensors: RandomTensors | None = None) -> dict[str, torch.Tensor]:
    """Stability's layout: `two_b` for the 2B path (its own `pos_embed.proj`, a text embedder as wide as
    the model), else the SD3.5-large "8B" layout (no input embedder, a 2048-like pooled input).
    `tensors`: another source (`MetaTensors` for the full-size layout on the meta device)."""
    r, d, p = tensors or RandomTensors(seed), base.hidden, base.patch
    sd = {"control_type": torch.tensor([control_type], dtype=torch.int32),
          **_embedders(r, d, p, d if two_b else base.adm, 16)}
    if two_b:
        sd["pos_embed.proj.weight"], sd["pos_embed.proj.bias"] = r.weight(d, 16, p, p), r.bias(d)
    for i in range(depth):
        block = f"transformer_blocks.{i}."
        sd |= _linear(r, block + "adaLN_modulation.1", 6 * d, d)
        sd |= _linear(r, block + "attn.qkv", 3 * d, d) | _linear(r, block + "attn.proj", d, d)
        sd |= _linear(r, block + "mlp.fc1", 4 * d, d) | _linear(r, block + "mlp.fc2", d, 4 * d)
        sd |= _linear(r, f"controlnet_blocks.{i}", d, d)
    return sd


def diffusers_controlnet(base: TinyMMDiT, depth: int, *, extra_channels: int = 0, qk_norm: bool = False,
                         seed: int = 0) -> dict[str, torch.Tensor]:
    """diffusers' `SD3ControlNetModel` layout with joint blocks (InstantX; alimama's inpainting net with
    `extra_channels=1`)."""
    r, d, p = RandomTensors(seed), base.hidden, base.patch
    sd = {"pos_embed.proj.weight": r.weight(d, 16, p, p), "pos_embed.proj.bias": r.bias(d),
          "pos_embed.pos_embed": r.normal(1, base.pos_embed_max_size**2, d, std=0.5),
          **_embedders(r, d, p, base.adm, 16 + extra_channels), **_linear(r, "context_embedder", d, base.context_dim)}
    for i in range(depth):
        block = f"transformer_blocks.{i}."
        sd |= _linear(r, block + "norm1.linear", 6 * d, d) | _linear(r, block + "norm1_context.linear", 6 * d, d)
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"):
            sd |= _linear(r, block + f"attn.{name}", d, d)
        if qk_norm:
            for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
                sd[block + f"attn.{name}.weight"] = r.norm_weight(HEAD_DIM)
        for ff in ("ff", "ff_context"):
            sd |= _linear(r, block + f"{ff}.net.0.proj", 4 * d, d) | _linear(r, block + f"{ff}.net.2", d, 4 * d)
        sd |= _linear(r, f"controlnet_blocks.{i}", d, d)
    return sd


def stability_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Stability-layout file in diffusers' names, as diffusers' scripts/convert_sd3_controlnet_to_diffusers.py
    maps it: each block's `qkv` split into `to_q`/`to_k`/`to_v`, `proj` -> `to_out.0`,
    `adaLN_modulation.1` -> `norm1.linear`, `mlp.fc1/fc2` -> `ff.net.0.proj/ff.net.2`; `control_type` dropped."""
    renames = {"adaLN_modulation.1": "norm1.linear", "attn.proj": "attn.to_out.0", "mlp.fc1": "ff.net.0.proj",
               "mlp.fc2": "ff.net.2"}
    out = {}
    for key, value in state.items():
        if key == "control_type":
            continue
        head, _, rest = key.partition(".")
        if head != "transformer_blocks":
            out[key] = value
            continue
        index, _, name = rest.partition(".")
        module, _, kind = name.rpartition(".")
        if module == "attn.qkv":
            for part, piece in zip(("to_q", "to_k", "to_v"), value.chunk(3)):
                out[f"transformer_blocks.{index}.attn.{part}.{kind}"] = piece
        else:
            out[f"transformer_blocks.{index}.{renames[module]}.{kind}"] = value
    return out


def diffusers_controlnet_model(base: TinyMMDiT, state: dict[str, torch.Tensor], *, joint: bool, depth: int,
                               extra_channels: int = 0, qk_norm: bool = False, pooled_dim: int | None = None):
    """diffusers' `SD3ControlNetModel` for `state` (diffusers' names), loaded strictly."""
    from diffusers import SD3ControlNetModel

    model = SD3ControlNetModel(
        sample_size=base.pos_embed_max_size * base.patch, patch_size=base.patch, in_channels=16, num_layers=depth,
        attention_head_dim=HEAD_DIM, num_attention_heads=base.heads,
        joint_attention_dim=base.context_dim if joint else None, caption_projection_dim=base.hidden,
        pooled_projection_dim=pooled_dim or base.adm, out_channels=16, pos_embed_max_size=base.pos_embed_max_size,
        extra_conditioning_channels=extra_channels, qk_norm="rms_norm" if qk_norm else None,
        use_pos_embed=joint, pos_embed_type="sincos" if joint else None, force_zeros_for_pooled_projection=joint,
    )
    model.load_state_dict(state, strict=True)
    return model.eval()
