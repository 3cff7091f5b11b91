"""The triple text encoder: CLIP-L, CLIP-G and T5-XXL combined into SD3's two conditioning tensors.

Mirrors Candle's `StableDiffusion3TripleClipWithTokenizer` (huggingface/candle@7f2ffe3
candle-examples/examples/stable-diffusion-3/clip.rs) and diffusers'
`StableDiffusion3Pipeline.encode_prompt`. Paper: arXiv 2403.03206, §3 and Fig. 2a:

    context = cat(pad_to_4096(cat(L_penultimate, G_penultimate)), T5)   (b, 77 + n_t5, 4096)
    y       = cat(L_pooled, G_pooled_projected)                         (b, 768 + 1280)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sd3.clip import weighted
from sd3.clip.t5 import T5Encoder
from sd3.clip.text_model import CLIPTextModel
from sd3.clip.tokenizer import CLIPTokenizer, T5Tokenizer
from sd3.errors import TextEncodingError


class TripleTextEncoder:
    """Prompts -> (context, y) for the MMDiT.

    Args:
        clip_l, clip_g: the CLIP models, with their tokenizers (which carry the pad token).
        t5, t5_tokenizer: T5-XXL and its tokenizer (which carries the T5 length); with `t5=None`
            the T5 part of the context is zeros, as diffusers does without its third encoder.
            That saves ~10 GB; the images lose detail and text rendering.
        t5_length: the length of the zero block when `t5` is None.
        context_dim: the context width without T5 (4096, T5-XXL's width); with T5, its width.
    """

    def __init__(
        self,
        clip_l: CLIPTextModel,
        clip_l_tokenizer: CLIPTokenizer,
        clip_g: CLIPTextModel,
        clip_g_tokenizer: CLIPTokenizer,
        t5: T5Encoder | None = None,
        t5_tokenizer: T5Tokenizer | None = None,
        *,
        t5_length: int = 77,
        context_dim: int = 4096,
    ) -> None:
        if t5 is not None and t5_tokenizer is None:
            raise TextEncodingError("a T5 model needs its tokenizer (t5_tokenizer)")
        if t5 is not None:
            context_dim = t5.config.d_model
        width = clip_l.config.hidden_size + clip_g.config.hidden_size
        if width > context_dim:
            raise TextEncodingError(f"CLIP-L + CLIP-G width {width} exceeds the context width {context_dim}")
        self.clip_l, self.clip_l_tokenizer = clip_l, clip_l_tokenizer
        self.clip_g, self.clip_g_tokenizer = clip_g, clip_g_tokenizer
        self.t5, self.t5_tokenizer = t5, t5_tokenizer
        self.t5_length, self.context_dim = t5_length, context_dim

    @torch.no_grad()
    def encode(self, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """A prompt or a list of b prompts -> context (b, 77 + n_t5, 4096), y (b, 2048).

        Both come out in CLIP-L's dtype, on CLIP-L's device.
        """
        device, dtype = self.clip_l.text_model.final_layer_norm.weight.device, self.clip_l.dtype
        l_hidden, l_pooled = self.clip_l(self.clip_l_tokenizer(prompts).to(device))
        g_hidden, g_pooled = self.clip_g(self.clip_g_tokenizer(prompts).to(device))
        clip_context = torch.cat([l_hidden.to(dtype), g_hidden.to(dtype)], dim=-1)  # (b, 77, 2048)
        clip_context = F.pad(clip_context, (0, self.context_dim - clip_context.shape[-1]))  # (b, 77, 4096)
        if self.t5 is None:
            t5_context = clip_context.new_zeros(clip_context.shape[0], self.t5_length, self.context_dim)
        else:
            t5_context = self.t5(self.t5_tokenizer(prompts).to(device)).to(dtype)  # (b, n_t5, 4096)
        context = torch.cat([clip_context, t5_context], dim=-2)
        y = torch.cat([l_pooled.to(dtype), g_pooled.to(dtype)], dim=-1)
        return context, y

    @torch.no_grad()
    def encode_with_lengths(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`encode`, or with tokenizers under `rules="comfyui"` ComfyUI's weighted encoding (clip/weighted.py):
        prompts (b) -> context (b, L, 4096), y (b, 2048), and each row's length (b,) int64 where the rows
        differ (zero-padded to the longest), else None."""
        if self.clip_l_tokenizer.rules == "comfyui":
            return weighted.encode(self, list(prompts))
        return (*self.encode(list(prompts)), None)
