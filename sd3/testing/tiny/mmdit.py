"""Tiny MMDiT checkpoints in the real `model.diffusion_model.` layout, and the diffusers reference."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sd3.testing.tiny.random import RandomTensors

HEAD_DIM = 64  # as in every SD3 checkpoint


@dataclass(frozen=True)
class TinyMMDiT:
    """A small MMDiT architecture; `heads` = depth and hidden = 64 * heads, as SD3 ties them."""

    depth: int = 2
    heads: int = 2
    patch: int = 2
    in_channels: int = 16
    pos_embed_max_size: int = 8
    adm: int = 32
    context_dim: int = 48
    qk_norm: bool = False
    attn2_layers: tuple[int, ...] = field(default=())

    @property
    def hidden(self) -> int:
        return self.heads * HEAD_DIM


# The three architectures the parity tests cover.
SD3_LIKE = TinyMMDiT(depth=2, heads=2)
SD35_LARGE_LIKE = TinyMMDiT(depth=3, heads=3, qk_norm=True)
SD35_MEDIUM_LIKE = TinyMMDiT(depth=3, heads=3, pos_embed_max_size=12, qk_norm=True, attn2_layers=(0,))


def mmdit_state_dict(arch: TinyMMDiT, seed: int = 0, prefix: str = "model.diffusion_model.") -> dict[str, torch.Tensor]:
    """Every MMDiT tensor of `arch`, named as in the official single-file checkpoints."""
    r = RandomTensors(seed)
    d, p = arch.hidden, arch.patch
    sd = {
        "pos_embed": r.normal(1, arch.pos_embed_max_size**2, d, std=0.5),
        "x_embedder.proj.weight": r.weight(d, arch.in_channels, p, p),
        "x_embedder.proj.bias": r.bias(d),
        "t_embedder.mlp.0.weight": r.weight(d, 256),
        "t_embedder.mlp.0.bias": r.bias(d),
        "t_embedder.mlp.2.weight": r.weight(d, d),
        "t_embedder.mlp.2.bias": r.bias(d),
        "y_embedder.mlp.0.weight": r.weight(d, arch.adm),
        "y_embedder.mlp.0.bias": r.bias(d),
        "y_embedder.mlp.2.weight": r.weight(d, d),
        "y_embedder.mlp.2.bias": r.bias(d),
        "context_embedder.weight": r.weight(d, arch.context_dim),
        "context_embedder.bias": r.bias(d),
        "final_layer.linear.weight": r.weight(p * p * 16, d),
        "final_layer.linear.bias": r.bias(p * p * 16),
        "final_layer.adaLN_modulation.1.weight": r.weight(2 * d, d),
        "final_layer.adaLN_modulation.1.bias": r.bias(2 * d),
    }
    for i in range(arch.depth):
        last = i == arch.depth - 1
        for stream in ("x_block", "context_block"):
            pre_only = last and stream == "context_block"
            attn2 = stream == "x_block" and i in arch.attn2_layers
            n_mods = 2 if pre_only else 9 if attn2 else 6
            base = f"joint_blocks.{i}.{stream}."
            sd[base + "adaLN_modulation.1.weight"] = r.weight(n_mods * d, d)
            sd[base + "adaLN_modulation.1.bias"] = r.bias(n_mods * d)
            for attn in ("attn", "attn2") if attn2 else ("attn",):
                sd[base + f"{attn}.qkv.weight"] = r.weight(3 * d, d)
                sd[base + f"{attn}.qkv.bias"] = r.bias(3 * d)
                if arch.qk_norm:
                    sd[base + f"{attn}.ln_q.weight"] = r.norm_weight(HEAD_DIM)
                    sd[base + f"{attn}.ln_k.weight"] = r.norm_weight(HEAD_DIM)
                if not pre_only:
                    sd[base + f"{attn}.proj.weight"] = r.weight(d, d)
                    sd[base + f"{attn}.proj.bias"] = r.bias(d)
            if not pre_only:
                sd[base + "mlp.fc1.weight"] = r.weight(4 * d, d)
                sd[base + "mlp.fc1.bias"] = r.bias(4 * d)
                sd[base + "mlp.fc2.weight"] = r.weight(d, 4 * d)
                sd[base + "mlp.fc2.bias"] = r.bias(d)
    return {prefix + k: v for k, v in sd.items()}


def diffusers_config(arch: TinyMMDiT) -> dict:
    """The explicit `SD3Transformer2DModel` config for `arch` (no hub access)."""
    return dict(
        sample_size=arch.pos_embed_max_size * arch.patch,
        patch_size=arch.patch,
        in_channels=arch.in_channels,
        num_layers=arch.depth,
        attention_head_dim=HEAD_DIM,
        num_attention_heads=arch.heads,
        joint_attention_dim=arch.context_dim,
        caption_projection_dim=arch.hidden,
        pooled_projection_dim=arch.adm,
        out_channels=16,
        pos_embed_max_size=arch.pos_embed_max_size,
        dual_attention_layers=arch.attn2_layers,
        qk_norm="rms_norm" if arch.qk_norm else None,
    )


def diffusers_mmdit(arch: TinyMMDiT, state_dict: dict[str, torch.Tensor]):
    """diffusers' `SD3Transformer2DModel` loaded strictly through its own single-file converter."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    model = SD3Transformer2DModel(**diffusers_config(arch))
    remaining = dict(state_dict)  # the converter pops what it uses: nothing may be left over
    converted = convert_sd3_transformer_checkpoint_to_diffusers(remaining)
    if remaining:
        raise AssertionError(f"diffusers' converter did not use {sorted(remaining)[:5]}")
    model.load_state_dict(converted, strict=True)
    return model.eval()
