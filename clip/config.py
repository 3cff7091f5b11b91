"""Text-encoder configurations: CLIP-L, CLIP-G and T5-XXL presets, and inference from checkpoints.

Numbers from docs/reference.md §3; field names follow transformers' `CLIPTextConfig` and
`T5Config`, whose key layout the SD3 checkpoints use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from sd3.checkpoint import shape_lookup
from sd3.errors import ConfigurationError

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_tanh")


def _count(shape: Mapping[str, object], pattern: str) -> int:
    return len({m.group(1) for name in shape if (m := re.match(pattern, name))})


@dataclass(frozen=True)
class CLIPConfig:
    """A CLIP text transformer (pre-LN, causal attention, 77 positions)."""

    vocab_size: int = 49408
    max_position_embeddings: int = 77
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12  # head_dim 64
    intermediate_size: int = 3072
    hidden_act: str = "quick_gelu"  # CLIP-L quick_gelu; CLIP-G gelu (exact); Candle runs G with gelu_tanh
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = None  # width of `text_projection`, when the checkpoint has one
    project_pooled: bool = False  # apply `text_projection` to the pooled output (CLIP-G in SD3)

    def __post_init__(self) -> None:
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigurationError(f"unknown activation '{self.hidden_act}'; use one of {', '.join(ACTIVATIONS)}")
        if self.project_pooled and self.projection_dim is None:
            raise ConfigurationError("project_pooled needs a text_projection, and this CLIP has none")

    @classmethod
    def clip_l(cls) -> CLIPConfig:
        """OpenAI CLIP ViT-L/14's text tower: 12 x 768, quick_gelu, pooled output unprojected."""
        return cls()

    @classmethod
    def clip_g(cls) -> CLIPConfig:
        """OpenCLIP ViT-bigG/14's text tower: 32 x 1280, exact GELU, pooled output projected."""
        return cls(
            hidden_size=1280,
            num_hidden_layers=32,
            num_attention_heads=20,
            intermediate_size=5120,
            hidden_act="gelu",
            projection_dim=1280,
            project_pooled=True,
        )

    @classmethod
    def from_state_dict(cls, shapes: Mapping[str, object], **overrides) -> CLIPConfig:
        """Shapes read off a checkpoint in the transformers layout (no `text_encoders.*` prefix).

        The activation and whether to project the pooled output are not in the shapes: pass them
        as `overrides` (the CLIP-L and CLIP-G loaders do).
        """
        shape, need = shape_lookup(shapes, "a CLIP text", "text_encoders.clip_{l,g}.transformer.")
        vocab, width = need("text_model.embeddings.token_embedding.weight")
        projection = shape.get("text_projection.weight")
        config = cls(
            vocab_size=vocab,
            max_position_embeddings=need("text_model.embeddings.position_embedding.weight")[0],
            hidden_size=width,
            num_hidden_layers=_count(shape, r"text_model\.encoder\.layers\.(\d+)\."),
            num_attention_heads=width // 64,
            intermediate_size=need("text_model.encoder.layers.0.mlp.fc1.weight")[0],
            projection_dim=projection[0] if projection else None,
        )
        return replace(config, **overrides)


@dataclass(frozen=True)
class T5Config:
    """A T5 v1.1 encoder: RMSNorm, relative position bias from block 0, gated-GELU feed-forward."""

    vocab_size: int = 32128
    d_model: int = 4096
    num_layers: int = 24
    num_heads: int = 64
    d_kv: int = 64
    d_ff: int = 10240
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6

    @classmethod
    def t5_xxl(cls) -> T5Config:
        return cls()

    @classmethod
    def from_state_dict(cls, shapes: Mapping[str, object]) -> T5Config:
        """Shapes read off a checkpoint in the transformers layout, embedding under `shared.weight`."""
        shape, need = shape_lookup(shapes, "a T5 encoder", "text_encoders.t5xxl.transformer.")
        vocab, d_model = need("shared.weight")
        buckets, heads = need("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        return cls(
            vocab_size=vocab,
            d_model=d_model,
            num_layers=_count(shape, r"encoder\.block\.(\d+)\."),
            num_heads=heads,
            d_kv=need("encoder.block.0.layer.0.SelfAttention.q.weight")[0] // heads,
            d_ff=need("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")[0],
            relative_attention_num_buckets=buckets,
        )
