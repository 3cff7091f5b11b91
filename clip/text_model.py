"""The CLIP text transformer used for CLIP-L and CLIP-G (pre-LN, causal self-attention).

Mirrors transformers' `CLIPTextModelWithProjection` (transformers/models/clip/modeling_clip.py),
whose parameter names the SD3 checkpoints use, and Candle's
candle-transformers/src/models/clip/text_model.rs as wired in
huggingface/candle@7f2ffe3 candle-examples/examples/stable-diffusion-3/clip.rs. SD3 conditions on
the penultimate hidden state (no final LayerNorm) and on the pooled final-LN state at EOS
(arXiv 2403.03206, §3 and Fig. 2a).

Legend: b batch, n tokens (77), h heads, e head dim, d width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from sd3.clip.config import CLIPConfig
from sd3.errors import TextEncodingError


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    """quick_gelu: x * sigmoid(1.702 x) (OpenAI CLIP); gelu: exact erf GELU; gelu_tanh: tanh approximation."""
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    return F.gelu(x, approximate="tanh" if name == "gelu_tanh" else "none")


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention with separate q, k, v and output projections."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, n, d) -> (b, n, d); token i attends to tokens 0..i."""
        q, k, v = (rearrange(p(x), "b n (h e) -> b h n e", h=self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(rearrange(out, "b h n e -> b n (h e)"))


class CLIPMLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.act = act
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(activation(self.act, self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.layer_norm1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.self_attn = CLIPAttention(d, config.num_attention_heads)
        self.layer_norm2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(d, config.intermediate_size, config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPTextModel(nn.Module):
    """Token ids (b, 77) -> (penultimate hidden state (b, 77, d), pooled vector (b, d or projection))."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.text_model = nn.Module()
        self.text_model.embeddings = nn.ModuleDict(
            {
                "token_embedding": nn.Embedding(config.vocab_size, d),
                "position_embedding": nn.Embedding(config.max_position_embeddings, d),
            }
        )
        self.text_model.encoder = nn.ModuleDict(
            {"layers": nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers))}
        )
        self.text_model.final_layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        # CLIP-G's projection of the pooled output; a CLIP-L file may carry one that SD3 does not use.
        self.text_projection = nn.Linear(d, config.projection_dim, bias=False) if config.projection_dim else None

    @property
    def dtype(self) -> torch.dtype:
        return self.text_model.final_layer_norm.weight.dtype

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (b, n), n <= 77, each row holding an EOS -> (penultimate (b, n, d), pooled).

        The pooled vector is the final-LN state at the first EOS, found as the first position of
        the largest id: EOS (49407) is the last entry of CLIP's vocabulary (as in Candle and
        OpenAI's CLIP).
        """
        cfg, tm = self.config, self.text_model
        if input_ids.ndim != 2 or input_ids.shape[1] > cfg.max_position_embeddings:
            raise TextEncodingError(
                f"CLIP takes (b, n <= {cfg.max_position_embeddings}) token ids, got {tuple(input_ids.shape)}"
            )
        n = input_ids.shape[1]
        x = tm.embeddings.token_embedding(input_ids) + tm.embeddings.position_embedding.weight[:n]
        *first, last = tm.encoder.layers
        for layer in first:
            x = layer(x)
        penultimate = x  # hidden_states[-2] in transformers' terms: the input of the last layer
        final = tm.final_layer_norm(last(x))
        pooled = final[torch.arange(final.shape[0]), input_ids.argmax(dim=1)]  # first EOS per row
        if cfg.project_pooled:
            pooled = self.text_projection(pooled)
        return penultimate, pooled
