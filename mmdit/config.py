"""MMDiT configuration: presets for the four SD3 / SD3.5 variants and inference from a checkpoint.

Presets mirror Candle's `sd3_medium()`, `sd3_5_large()` and `sd3_5_medium()`
(huggingface/candle@75a49f4 candle-transformers/src/models/mmdit/model.rs). Inference reads the
structure off tensor names and shapes the way Stability's loader does (Stability-AI/sd3.5@8df03ab
sd3_impls.py, `BaseModel.__init__`), so one loader serves every variant, including tiny test
checkpoints. See docs/reference.md §2 for the numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sd3.checkpoint import shape_lookup
from sd3.errors import ConfigurationError, ModelLoadingError

_BLOCK = re.compile(r"^joint_blocks\.(\d+)\.")


@dataclass(frozen=True)
class Config:
    """Hyper-parameters of an MMDiT; field names follow Stability's `MMDiTX.__init__`."""

    depth: int  # number of joint blocks; SD3 ties hidden = 64 * depth and heads = depth
    hidden_size: int  # width of both streams
    num_heads: int
    patch_size: int = 2  # latent pixels per token side
    in_channels: int = 16  # VAE latent channels
    out_channels: int = 16
    pos_embed_max_size: int = 192  # side of the stored position table, in tokens
    adm_in_channels: int = 2048  # pooled text vector: CLIP-L 768 + CLIP-G 1280
    context_dim: int = 4096  # per-token text features (T5-XXL width)
    mlp_ratio: float = 4.0
    frequency_embedding_size: int = 256  # sinusoidal timestep features
    qk_norm: bool = False  # RMSNorm on queries and keys per head (SD3.5)
    x_block_self_attn_layers: tuple[int, ...] = ()  # MMDiT-X blocks with `attn2` (SD3.5-medium)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def max_image_size(self) -> int:
        """Largest image side in pixels the position table covers (SD3's VAE downsamples 8x)."""
        return self.pos_embed_max_size * self.patch_size * 8

    @classmethod
    def sd3_medium(cls) -> Config:
        return cls(depth=24, hidden_size=64 * 24, num_heads=24, pos_embed_max_size=192)

    @classmethod
    def sd3_5_large(cls) -> Config:
        """SD3.5-large and SD3.5-large-turbo (same architecture, distilled weights)."""
        return cls(depth=38, hidden_size=64 * 38, num_heads=38, pos_embed_max_size=192, qk_norm=True)

    @classmethod
    def sd3_5_medium(cls) -> Config:
        return cls(
            depth=24,
            hidden_size=64 * 24,
            num_heads=24,
            pos_embed_max_size=384,
            qk_norm=True,
            x_block_self_attn_layers=tuple(range(13)),
        )

    @classmethod
    def preset(cls, which: str) -> Config:
        """The architecture of a variant named as Candle's `--which` ("3-medium", "3.5-large", ...)."""
        presets = {
            "3-medium": cls.sd3_medium,
            "3.5-large": cls.sd3_5_large,
            "3.5-large-turbo": cls.sd3_5_large,
            "3.5-medium": cls.sd3_5_medium,
        }
        if which not in presets:
            raise ConfigurationError(f"unknown variant '{which}'; choose one of {', '.join(presets)}")
        return presets[which]()

    @classmethod
    def from_state_dict(cls, shapes: Mapping[str, object]) -> Config:
        """Infer the configuration from MMDiT tensor names and shapes (no `model.diffusion_model.`).

        Args:
            shapes: name -> tensor, or name -> shape tuple; only shapes are used.

        Raises:
            ModelLoadingError: a tensor the inference needs is absent.
            ConfigurationError: the shapes are inconsistent (e.g. a non-square position table).
        """
        shape, need = shape_lookup(shapes, "an MMDiT", "model.diffusion_model.")
        hidden, in_channels, patch, _ = need("x_embedder.proj.weight")
        blocks = sorted({int(m.group(1)) for name in shape if (m := _BLOCK.match(name))})
        if not blocks or blocks != list(range(len(blocks))):
            raise ModelLoadingError(f"joint_blocks indices are not 0..N-1 (found {blocks[:8]}...)")

        pos_tokens = need("pos_embed")[1]
        pos_side = math.isqrt(pos_tokens)
        if pos_side * pos_side != pos_tokens:
            raise ConfigurationError(f"pos_embed has {pos_tokens} positions, not a square grid")

        qk_norm = "joint_blocks.0.x_block.attn.ln_k.weight" in shape
        # head_dim is 64 in every SD3 checkpoint; a checkpoint with QK norm states it outright.
        head_dim = shape["joint_blocks.0.x_block.attn.ln_k.weight"][0] if qk_norm else 64
        if hidden % head_dim:
            raise ConfigurationError(f"hidden size {hidden} is not a multiple of head_dim {head_dim}")

        final_out = need("final_layer.linear.weight")[0]
        return cls(
            depth=len(blocks),
            hidden_size=hidden,
            num_heads=hidden // head_dim,
            patch_size=patch,
            in_channels=in_channels,
            out_channels=final_out // (patch * patch),
            pos_embed_max_size=pos_side,
            adm_in_channels=need("y_embedder.mlp.0.weight")[1],
            context_dim=need("context_embedder.weight")[1],
            mlp_ratio=need("joint_blocks.0.x_block.mlp.fc1.weight")[0] / hidden,
            frequency_embedding_size=need("t_embedder.mlp.0.weight")[1],
            qk_norm=qk_norm,
            x_block_self_attn_layers=tuple(
                i for i in blocks if f"joint_blocks.{i}.x_block.attn2.qkv.weight" in shape
            ),
        )
