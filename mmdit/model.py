"""The MMDiT: SD3's multimodal diffusion transformer, and SD3.5-medium's MMDiT-X.

Mirrors huggingface/candle@75a49f4 candle-transformers/src/models/mmdit/model.rs (`MMDiT`) and
Stability-AI/sd3.5@8df03ab mmditx.py (`MMDiTX`). Paper: Esser et al., "Scaling Rectified Flow
Transformers for High-Resolution Image Synthesis", arXiv 2403.03206, §4 and Fig. 2.

Attribute names are the checkpoint keys below `model.diffusion_model.`, so a raw state dict loads
without renaming. Legend: b batch, c latent channels, h w token grid, p patch, d hidden size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from einops import rearrange
from torch import nn

from sd3.errors import ConfigurationError
from sd3.mmdit.blocks import FinalLayer, JointBlock
from sd3.mmdit.config import Config
from sd3.mmdit.embeddings import PatchEmbed, TimestepEmbedder, VectorEmbedder, cropped_pos_embed


class MMDiT(nn.Module):
    """Predicts the flow-matching velocity v (b, c, H, W) for latents x at noise level sigma."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        # Fixed 2-D sin-cos table stored in the checkpoint: (1, max*max, d).
        self.register_buffer("pos_embed", torch.zeros(1, config.pos_embed_max_size**2, d))
        self.x_embedder = PatchEmbed(config.in_channels, d, config.patch_size)
        self.t_embedder = TimestepEmbedder(d, config.frequency_embedding_size)
        self.y_embedder = VectorEmbedder(config.adm_in_channels, d)
        self.context_embedder = nn.Linear(config.context_dim, d)
        self.joint_blocks = nn.ModuleList(
            JointBlock(
                d,
                config.num_heads,
                config.mlp_hidden_size,
                qk_norm=config.qk_norm,
                pre_only=i == config.depth - 1,
                x_block_self_attn=i in config.x_block_self_attn_layers,
            )
            for i in range(config.depth)
        )
        self.final_layer = FinalLayer(d, config.patch_size, config.out_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        context: torch.Tensor,
        skip_layers: Iterable[int] | None = None,
        controls: Sequence[torch.Tensor] | None = None,
        controls_after_last_block: bool = True,
    ) -> torch.Tensor:
        """One velocity prediction (the Candle signature).

        Args:
            x: latents (b, c, H, W) in the VAE's scaled space; H and W multiples of the patch size.
            t: timesteps (b,) = sigma * 1000 (a 0-d tensor is broadcast over the batch).
            y: pooled text vector (b, adm_in_channels).
            context: per-token text features (b, l, context_dim).
            skip_layers: indices of joint blocks to bypass entirely (skip-layer guidance); a skipped
                block adds no control residual either (Stability's `forward_core_with_concat`).
            controls: ControlNet residuals, k tensors (b, h*w, d) (mmdit/controlnet.py, scaled and summed
                over nets): after block i the image tokens get `controls[i * k // depth]`.
            controls_after_last_block: whether the last block gets its residual too; Stability's code
                adds it, diffusers' `SD3Transformer2DModel` does not (its last block is context-pre-only).

        Returns:
            v (b, out_channels, H, W) in the model's dtype; inputs are cast to it.

        Raises:
            ConfigurationError: shapes that do not fit this model, or a grid larger than the
                position table (the message names the largest supported image size).
        """
        cfg = self.config
        skip = set(skip_layers or ())
        b, h, w = self._check_inputs(x, t, y, context, skip)
        dtype = self.dtype
        pos = cropped_pos_embed(self.pos_embed, h, w, patch_size=cfg.patch_size, max_size=cfg.pos_embed_max_size)
        tokens = self.x_embedder(x.to(dtype)) + pos  # (b, h*w, d)
        c = self.t_embedder(t.expand(b)) + self.y_embedder(y.to(dtype))  # (b, d)
        ctx = self.context_embedder(context.to(dtype))  # (b, l, d)

        for i, block in enumerate(self.joint_blocks):
            if i in skip:
                continue
            ctx, tokens = block(ctx, tokens, c)
            if controls and (i < cfg.depth - 1 or controls_after_last_block):
                tokens = tokens + controls[i * len(controls) // cfg.depth].to(dtype)

        out = self.final_layer(tokens, c)  # (b, h*w, p*p*c)
        p = cfg.patch_size
        return rearrange(out, "b (h w) (p q c) -> b c (h p) (w q)", h=h, w=w, p=p, q=p)

    def _check_inputs(self, x, t, y, context, skip: set[int]) -> tuple[int, int, int]:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ConfigurationError(f"x must be (b, {cfg.in_channels}, H, W) latents, got {tuple(x.shape)}")
        b, _, height, width = x.shape
        if height % cfg.patch_size or width % cfg.patch_size:
            raise ConfigurationError(
                f"latent height and width must be multiples of the patch size {cfg.patch_size} "
                f"(image sides multiples of {8 * cfg.patch_size}), got {height}x{width}"
            )
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != b):
            raise ConfigurationError(f"t must be (b,) = ({b},) or a scalar, got {tuple(t.shape)}")
        if tuple(y.shape) != (b, cfg.adm_in_channels):
            raise ConfigurationError(f"y must be ({b}, {cfg.adm_in_channels}), got {tuple(y.shape)}")
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.context_dim:
            raise ConfigurationError(f"context must be ({b}, L, {cfg.context_dim}), got {tuple(context.shape)}")
        bad = sorted(i for i in skip if not 0 <= i < cfg.depth)
        if bad:
            raise ConfigurationError(f"skip_layers {bad} do not exist: this MMDiT has blocks 0..{cfg.depth - 1}")
        return b, height // cfg.patch_size, width // cfg.patch_size
