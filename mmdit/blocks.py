"""Joint blocks: two adaLN-Zero transformer streams that share one attention, and the final layer.

Mirrors huggingface/candle@4acf8c7 candle-transformers/src/models/mmdit/blocks.rs (`DiTBlock`,
`QkvOnlyDiTBlock`, `JointBlock`, `FinalLayer`) and Stability-AI/sd3.5@8df03ab mmditx.py
(`DismantledBlock`, `block_mixing`). Paper: arXiv 2403.03206, §4 and Fig. 2b: each modality keeps
its own weights, and the two token sequences are concatenated for the attention operation.

Legend: b batch, n tokens of one stream, d hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sd3.mmdit.attention import Attention, attention


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine parameters, eps 1e-6: the adaLN modulation supplies scale and shift."""
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (b, n, d) * (1 + scale) + shift, with shift and scale (b, d) broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Mlp(nn.Module):
    """fc1 -> GELU (tanh approximation) -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """One stream (`x_block` or `context_block`) of a joint block.

    `adaLN_modulation` maps c (b, d) to per-sample (shift, scale, gate) triples, in the checkpoint's
    order: msa, mlp, then msa2 for an MMDiT-X block. A pre-only stream (the last block's context)
    only produces q, k, v: 2 chunks (shift, scale), no `proj`, no `mlp`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        *,
        qk_norm: bool,
        pre_only: bool = False,
        x_block_self_attn: bool = False,
    ) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.n_mods = 2 if pre_only else 9 if x_block_self_attn else 6
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, pre_only=pre_only)
        # MMDiT-X (SD3.5-medium): a second, image-only self-attention on the same normalised input.
        self.attn2 = Attention(dim, num_heads, qk_norm=qk_norm) if x_block_self_attn else None
        self.mlp = None if pre_only else Mlp(dim, mlp_hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, self.n_mods * dim))

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor):
        """x (b, n, d), c (b, d) -> ((q, k, v) each (b, h, n, e), state for `post_attention`)."""
        mods = self.adaLN_modulation(c).chunk(self.n_mods, dim=1)  # each (b, d)
        x_norm = layer_norm(x)
        qkv = self.attn.pre_attention(modulate(x_norm, mods[0], mods[1]))
        return qkv, (x_norm, mods)

    def post_attention(
        self, attn_out: torch.Tensor, x: torch.Tensor, x_norm: torch.Tensor, mods: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """Residual updates of x (b, n, d) from this stream's rows of the joint attention output."""
        _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods[:6]
        x = x + gate_msa[:, None] * self.attn.post_attention(attn_out)
        if self.attn2 is not None:
            shift_msa2, scale_msa2, gate_msa2 = mods[6:]
            q2, k2, v2 = self.attn2.pre_attention(modulate(x_norm, shift_msa2, scale_msa2))
            x = x + gate_msa2[:, None] * self.attn2.post_attention(attention(q2, k2, v2))
        return x + gate_mlp[:, None] * self.mlp(modulate(layer_norm(x), shift_mlp, scale_mlp))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The stream alone, attending over its own tokens: x (b, n, d), c (b, d) -> (b, n, d).

        A ControlNet block of Stability's SD3.5 nets (its `DismantledBlock` called as `block(x, c)`)."""
        qkv, state = self.pre_attention(x, c)
        return self.post_attention(attention(*qkv), x, *state)


class JointBlock(nn.Module):
    """`context_block` and `x_block` attending jointly over [context, x] tokens."""

    def __init__(
        self, dim: int, num_heads: int, mlp_hidden: int, *, qk_norm: bool, pre_only: bool, x_block_self_attn: bool
    ) -> None:
        super().__init__()
        self.context_block = DiTBlock(dim, num_heads, mlp_hidden, qk_norm=qk_norm, pre_only=pre_only)
        self.x_block = DiTBlock(dim, num_heads, mlp_hidden, qk_norm=qk_norm, x_block_self_attn=x_block_self_attn)

    def forward(
        self, context: torch.Tensor, x: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """context (b, l, d), x (b, n, d), c (b, d) -> (context or None after the last block, x)."""
        (cq, ck, cv), context_state = self.context_block.pre_attention(context, c)
        (xq, xk, xv), x_state = self.x_block.pre_attention(x, c)
        k = torch.cat([ck, xk], dim=2)  # (b, h, l + n, e): [context, x] as Stability and Candle
        v = torch.cat([cv, xv], dim=2)
        if self.context_block.pre_only:
            # The last block's context rows are never used: only the image tokens need to query.
            x_out = attention(xq, k, v)  # (b, n, d)
            return None, self.x_block.post_attention(x_out, x, *x_state)
        out = attention(torch.cat([cq, xq], dim=2), k, v)  # (b, l + n, d)
        l = context.shape[1]
        context = self.context_block.post_attention(out[:, :l], context, *context_state)
        return context, self.x_block.post_attention(out[:, l:], x, *x_state)


class FinalLayer(nn.Module):
    """Modulated LayerNorm then `linear` to p*p*c values per token; `adaLN_modulation` gives (shift, scale)."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (b, n, d), c (b, d) -> (b, n, p*p*c)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(layer_norm(x), shift, scale))
