"""Tiny CLIP and T5 checkpoints in the real transformers key layout, and their references.

Key lists are written out from docs/reference.md §3 (transformers' `CLIPTextModel` and
`T5EncoderModel` names), in both layouts: all-in-one (`text_encoders.*.transformer.` prefix)
and separate files (no prefix).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sd3.testing.tiny.random import RandomTensors


@dataclass(frozen=True)
class TinyCLIP:
    vocab: int
    width: int = 128  # heads = width / 64
    layers: int = 3
    mlp: int = 256
    projection: bool = False
    act: str = "quick_gelu"


@dataclass(frozen=True)
class TinyT5:
    vocab: int = 64
    d_model: int = 384
    heads: int = 4
    d_kv: int = 64
    d_ff: int = 512
    layers: int = 2
    buckets: int = 32


def clip_state_dict(arch: TinyCLIP, prefix: str = "", seed: int = 0, tensors: RandomTensors | None = None):
    r = tensors or RandomTensors(seed)
    d = arch.width
    sd = {
        "text_model.embeddings.token_embedding.weight": r.normal(arch.vocab, d, std=0.5),
        "text_model.embeddings.position_embedding.weight": r.normal(77, d, std=0.5),
        "text_model.final_layer_norm.weight": r.norm_weight(d),
        "text_model.final_layer_norm.bias": r.bias(d),
    }
    for i in range(arch.layers):
        base = f"text_model.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[base + f"self_attn.{proj}.weight"] = r.weight(d, d)
            sd[base + f"self_attn.{proj}.bias"] = r.bias(d)
        for norm in ("layer_norm1", "layer_norm2"):
            sd[base + f"{norm}.weight"] = r.norm_weight(d)
            sd[base + f"{norm}.bias"] = r.bias(d)
        sd[base + "mlp.fc1.weight"] = r.weight(arch.mlp, d)
        sd[base + "mlp.fc1.bias"] = r.bias(arch.mlp)
        sd[base + "mlp.fc2.weight"] = r.weight(d, arch.mlp)
        sd[base + "mlp.fc2.bias"] = r.bias(d)
    if arch.projection:
        sd["text_projection.weight"] = r.weight(d, d)
    return {prefix + k: v for k, v in sd.items()}


def t5_state_dict(
    arch: TinyT5, prefix: str = "", seed: int = 0, embedding_keys=("shared.weight", "encoder.embed_tokens.weight"),
    tensors: RandomTensors | None = None,
):
    r = tensors or RandomTensors(seed)
    d, inner = arch.d_model, arch.heads * arch.d_kv
    embedding = r.normal(arch.vocab, d, std=1.0)
    sd = {key: embedding.clone() for key in embedding_keys}  # files store both names as copies
    sd["encoder.final_layer_norm.weight"] = r.norm_weight(d)
    sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = r.normal(arch.buckets, arch.heads)
    for i in range(arch.layers):
        base = f"encoder.block.{i}.layer."
        for proj in ("q", "k", "v"):
            sd[base + f"0.SelfAttention.{proj}.weight"] = r.weight(inner, d)
        sd[base + "0.SelfAttention.o.weight"] = r.weight(d, inner)
        sd[base + "0.layer_norm.weight"] = r.norm_weight(d)
        sd[base + "1.DenseReluDense.wi_0.weight"] = r.weight(arch.d_ff, d)
        sd[base + "1.DenseReluDense.wi_1.weight"] = r.weight(arch.d_ff, d)
        sd[base + "1.DenseReluDense.wo.weight"] = r.weight(d, arch.d_ff)
        sd[base + "1.layer_norm.weight"] = r.norm_weight(d)
    return {prefix + k: v for k, v in sd.items()}


def transformers_clip(arch: TinyCLIP, state_dict, prefix: str):
    """`CLIPTextModelWithProjection`, loaded strictly as diffusers' single-file loader does for SD3.

    CLIP-L gets an identity `text_projection` (diffusers' conversion: its pooled output is unprojected).
    """
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    vocab_size = arch.vocab
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=arch.width, intermediate_size=arch.mlp, num_hidden_layers=arch.layers,
        num_attention_heads=arch.width // 64, max_position_embeddings=77, hidden_act=arch.act,
        projection_dim=arch.width, eos_token_id=vocab_size - 1, bos_token_id=vocab_size - 2, pad_token_id=vocab_size - 1,
    )
    model = CLIPTextModelWithProjection(config)
    # A separate file has no prefix for the converter to remove: its names are already transformers'.
    converted = convert_ldm_clip_checkpoint(dict(state_dict), remove_prefix=prefix) if prefix else dict(state_dict)
    if not arch.projection:
        converted["text_projection.weight"] = torch.eye(arch.width)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def transformers_t5(arch: TinyT5, state_dict):
    """`T5EncoderModel` (T5 v1.1: gated GELU), loaded strictly through diffusers' SD3 T5 conversion."""
    from diffusers.loaders.single_file_utils import convert_sd3_t5_checkpoint_to_diffusers
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=arch.vocab, d_model=arch.d_model, d_kv=arch.d_kv, d_ff=arch.d_ff, num_layers=arch.layers,
        num_heads=arch.heads, relative_attention_num_buckets=arch.buckets, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, is_encoder_decoder=False, use_cache=False,
    )
    model = T5EncoderModel(config)
    converted = convert_sd3_t5_checkpoint_to_diffusers(dict(state_dict))
    if not converted:  # separate-file layout: no prefix to remove
        converted = dict(state_dict)
    model.load_state_dict(converted, strict=True)
    return model.eval()
