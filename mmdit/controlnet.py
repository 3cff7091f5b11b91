"""ControlNet for SD3 and SD3.5: a short transformer whose per-block outputs are added to the MMDiT's image tokens.

Mirrors Stability-AI/sd3.5@8df03ab dit_embedder.py (`ControlNetEmbedder`), sd3_impls.py
(`BaseModel.apply_model`) and mmditx.py (`forward_core_with_concat`), and diffusers'
models/controlnets/controlnet_sd3.py (`SD3ControlNetModel`). ControlNet: Zhang et al., arXiv 2302.05543.
docs/controlnet.md draws the data flow.

Three kinds, told apart by the file's tensors (`ControlNetConfig.from_state_dict`):
- "stability-8b", Stability's SD3.5-large blur, canny and depth nets: self-attention blocks over the
  image tokens only (no text stream), each block's output the next one's input. They have no input
  embedder: the image tokens come from the base MMDiT's `x_embedder` and position table, and the
  text embedder reads the raw pooled vector (its width equals the base's, 2048).
- "stability-2b", the other path of Stability's code: its own `x_embedder` without positions, a text
  embedder that reads the base's embedded pooled vector (its width is the hidden size), and every
  block reading the same input tokens (not chained).
- "joint", diffusers' `SD3ControlNetModel` files (InstantX's canny, pose and tile nets, alimama's
  inpainting net): joint blocks with their own context stream, their own input embedder and
  position table, chained; diffusers feeds them a zero pooled vector (its
  `force_zeros_for_pooled_projection`, true for these files).

Every kind adds its control latent through `pos_embed_input` (a zero-initialised patch embedding in
training) and maps each block's output through `controlnet_blocks.i` (d -> d). The MMDiT adds
output `i * n // depth` after joint block i (sd3/mmdit/model.py).

Legend: b batch, n image tokens, l context tokens, d hidden size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from sd3.checkpoint import shape_lookup
from sd3.errors import ConfigurationError, ModelLoadingError
from sd3.mmdit.blocks import DiTBlock, JointBlock
from sd3.mmdit.config import Config
from sd3.mmdit.embeddings import PatchEmbed, TimestepEmbedder, VectorEmbedder, cropped_pos_embed

KINDS = ("stability-8b", "stability-2b", "joint")
CONTROL_TYPES = {0: "blur", 1: "canny", 2: "depth"}  # Stability's `control_type`
_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.")


def control_image_type(control_type: torch.Tensor) -> str:
    """Stability's one-number `control_type` tensor -> "blur", "canny", "depth" (or "unknown")."""
    return CONTROL_TYPES.get(int(control_type.flatten()[0]), "unknown")


@dataclass(frozen=True)
class ControlNetConfig:
    """What a ControlNet file holds, in our names (mmdit/controlnet_loading.py renames diffusers')."""

    kind: str  # one of KINDS
    depth: int  # number of blocks (and of outputs)
    hidden_size: int
    num_heads: int
    patch_size: int = 2
    cond_channels: int = 16  # control latent channels: 16, or 17 with an inpainting mask
    pooled_dim: int = 2048  # what the text embedder reads: the raw pooled vector, or the hidden size (2B)
    context_dim: int = 4096  # joint kind: per-token text features
    pos_embed_max_size: int = 0  # joint kind: side of its own position table
    qk_norm: bool = False  # joint kind: RMSNorm on queries and keys
    has_control_type: bool = False  # Stability's files say their type; diffusers' conversion drops it

    @property
    def chained(self) -> bool:
        """Whether each block reads the previous block's output (all but Stability's 2B path)."""
        return self.kind != "stability-2b"

    @property
    def zero_pooled(self) -> bool:
        """diffusers gives the joint files a zero pooled vector (`force_zeros_for_pooled_projection`)."""
        return self.kind == "joint"

    @property
    def inpainting(self) -> bool:
        """A net whose control latent carries a mask channel (alimama's): the masked image and the kept area."""
        return self.cond_channels == 17

    @property
    def latent_shift(self) -> bool:
        """Whether the control latent is shifted by the VAE's shift factor before scaling: not for the
        plain joint files, which diffusers encodes without it ("instantx sd3 controlnet does not apply
        shift factor"); its inpainting pipeline does shift."""
        return self.kind != "joint" or self.inpainting

    @classmethod
    def from_state_dict(cls, shapes: Mapping[str, object], base: Config) -> ControlNetConfig:
        """Infer the kind and sizes from tensor names and shapes (ours), against the base MMDiT `base`.

        Raises:
            ModelLoadingError: a tensor the kind needs is missing.
            ConfigurationError: a ControlNet for another width than the base's, or another patch size.
        """
        shape, need = shape_lookup(shapes, "an SD3 ControlNet", "")
        blocks = [int(m.group(1)) for m in map(_BLOCK.match, shape) if m]
        if not blocks:
            raise ModelLoadingError("this SD3 ControlNet file has no 'transformer_blocks.' tensors: it is incomplete")
        depth = 1 + max(blocks)
        if depth > base.depth:
            raise ConfigurationError(f"this ControlNet has {depth} blocks, more than the MMDiT's {base.depth}: "
                                     "it was trained for another model")
        hidden, cond_channels, patch = need("pos_embed_input.proj.weight")[:3]
        if hidden != base.hidden_size or patch != base.patch_size:
            raise ConfigurationError(
                f"this ControlNet is {hidden} wide with {patch}x{patch} patches; the MMDiT is "
                f"{base.hidden_size} wide with {base.patch_size}x{base.patch_size}: it was trained for another model"
            )
        pooled = need("y_embedder.mlp.0.weight")[1]
        fields = dict(depth=depth, hidden_size=hidden, num_heads=hidden // base.head_dim, patch_size=patch,
                      cond_channels=cond_channels, pooled_dim=pooled, has_control_type="control_type" in shape)
        if "context_embedder.weight" in shape:
            table = need("pos_embed")[1]
            side = round(table**0.5)
            return cls("joint", **fields, context_dim=need("context_embedder.weight")[1], pos_embed_max_size=side,
                       qk_norm="transformer_blocks.0.x_block.attn.ln_q.weight" in shape)
        # Stability tells its nets apart by a 2048-wide text embedder; that is the base's pooled width.
        return cls("stability-8b" if pooled == base.adm_in_channels else "stability-2b", **fields)


class ControlNet(nn.Module):
    """Control latents -> `depth` residuals (b, n, d) for the MMDiT's image tokens."""

    def __init__(self, config: ControlNetConfig) -> None:
        super().__init__()
        self.config = config
        d, heads, p = config.hidden_size, config.num_heads, config.patch_size
        if config.kind != "stability-8b":
            self.x_embedder = PatchEmbed(16, d, p)
        if config.kind == "joint":
            self.register_buffer("pos_embed", torch.zeros(1, config.pos_embed_max_size**2, d))
            self.context_embedder = nn.Linear(config.context_dim, d)
            blocks = [JointBlock(d, heads, 4 * d, qk_norm=config.qk_norm, pre_only=False, x_block_self_attn=False)
                      for _ in range(config.depth)]
        else:
            blocks = [DiTBlock(d, heads, 4 * d, qk_norm=False) for _ in range(config.depth)]
        if config.has_control_type:
            self.register_buffer("control_type", torch.zeros(1, dtype=torch.int32))
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = VectorEmbedder(config.pooled_dim, d)
        self.pos_embed_input = PatchEmbed(config.cond_channels, d, p)
        self.transformer_blocks = nn.ModuleList(blocks)
        self.controlnet_blocks = nn.ModuleList(nn.Linear(d, d) for _ in range(config.depth))

    @property
    def dtype(self) -> torch.dtype:
        return self.pos_embed_input.proj.weight.dtype

    @property
    def control_image_type(self) -> str | None:
        """"blur", "canny" or "depth" for Stability's files (their `control_type` tensor), else None."""
        if not self.config.has_control_type:
            return None
        return control_image_type(self.get_buffer("control_type"))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        context: torch.Tensor,
        cond: torch.Tensor,
        base: nn.Module,
    ) -> list[torch.Tensor]:
        """The residuals for one MMDiT call.

        Args:
            x: latents (b, 16, H, W), as the MMDiT gets them.
            t: timesteps (b,) = sigma * 1000.
            y: pooled text vectors (b, 2048), as the MMDiT gets them.
            context: text features (b, l, 4096); only the joint kind reads them.
            cond: the control latent (b, cond_channels, H, W).
            base: the MMDiT (Stability's nets embed with its `x_embedder`, position table or `y_embedder`).

        Returns:
            `depth` tensors (b, H/p * W/p, d) in the model's dtype, before any control scale.
        """
        cfg, dtype = self.config, self.dtype
        h, w = x.shape[-2] // cfg.patch_size, x.shape[-1] // cfg.patch_size
        x = x.to(dtype)
        if cfg.kind == "stability-8b":
            tokens = base.x_embedder(x) + cropped_pos_embed(
                base.pos_embed, h, w, patch_size=cfg.patch_size, max_size=base.config.pos_embed_max_size)
        elif cfg.kind == "stability-2b":
            tokens = self.x_embedder(x)  # no positions on this path (Stability's `x_embedder` alone)
        else:
            tokens = self.x_embedder(x) + cropped_pos_embed(
                self.pos_embed, h, w, patch_size=cfg.patch_size, max_size=cfg.pos_embed_max_size)
        y = y.to(dtype)
        if cfg.kind == "stability-2b":
            y = base.y_embedder(y)  # (b, d): the 2B net embeds the base's embedded vector again
        elif cfg.zero_pooled:
            y = torch.zeros_like(y)
        c = self.t_embedder(t.expand(x.shape[0])) + self.y_embedder(y)  # (b, d)
        tokens = tokens + self.pos_embed_input(cond.to(dtype))  # (b, n, d)
        ctx = self.context_embedder(context.to(dtype)) if cfg.kind == "joint" else None
        outputs = []
        for block, project in zip(self.transformer_blocks, self.controlnet_blocks):
            if cfg.kind == "joint":
                ctx, out = block(ctx, tokens, c)
            else:
                out = block(tokens, c)
            if cfg.chained:
                tokens = out
            outputs.append(project(out))
        return outputs


def check_cond(config: ControlNetConfig, cond: torch.Tensor, x: torch.Tensor) -> None:
    """Refuse a control latent whose shape does not match the latents x (b, 16, H, W)."""
    if cond.ndim != 4 or cond.shape[1] != config.cond_channels or cond.shape[-2:] != x.shape[-2:]:
        raise ConfigurationError(
            f"the control latent must be (b, {config.cond_channels}, {x.shape[-2]}, {x.shape[-1]}), "
            f"got {tuple(cond.shape)}"
        )
