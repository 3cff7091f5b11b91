"""Weighted prompts as ComfyUI encodes them: every chunk kept, each token moved away from the empty prompt.

ComfyUI (comfy/sd1_clip.py `ClipTokenWeightEncoder.encode_token_weights`, comfy/text_encoders/sd3_clip.py
`SD3ClipModel.encode_token_weights`) encodes a prompt's chunks (clip/tokenizer.py, `rules="comfyui"`)
in one batch with one more row, the empty prompt of the same length: BOS, EOS, padding for CLIP;
EOS, padding for T5. Where a token's weight w is not 1 its features z become

    z_empty + w · (z − z_empty)          (z_empty: the empty row's features at the same position)

so w = 0 gives the empty prompt's features there, not zeros. Without any weight ≠ 1 the empty row
is not encoded at all. Then, for SD3:

    context = cat(pad_to_4096(cat(L chunks, G chunks)), T5)   (1, 77 k + n_t5, 4096)
    y       = cat(L pooled, G pooled projected) of the first chunk

Without T5 the context is the CLIP rows alone: ComfyUI adds no zero rows in T5's place.
Prompts of one call differ in length, so the contexts are padded with zero rows to the longest and
their lengths returned: the sampler gives the model each row's own length (sampling/guidance.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _weigh(model, ids: torch.Tensor, weights: torch.Tensor, empty: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """ids, weights (k, n) -> features (1, k·n, d) float32 weighted, and the first chunk's pooled (1, p).

    `model(ids)` returns (features (k, n, d), pooled (k, p)) for CLIP, or features alone for T5."""
    weighted = bool((weights != 1).any())
    batch = torch.cat([ids, torch.tensor([empty], dtype=ids.dtype)]) if weighted else ids
    out = model(batch.to(_device(model)))
    hidden, pooled = out if isinstance(out, tuple) else (out, None)
    z = hidden[: len(ids)].float()
    if weighted:
        z_empty, w = hidden[-1].float(), weights.to(z.device)[..., None]
        z = torch.where(w != 1, (z - z_empty) * w + z_empty, z)
    return z.reshape(1, -1, z.shape[-1]), None if pooled is None else pooled[:1]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def encode_prompt(encoder, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt -> context (1, 77 k + n_t5, context_dim) and y (1, 2048), in CLIP-L's dtype.

    `encoder` is a `TripleTextEncoder` whose tokenizers follow `rules="comfyui"`."""
    dtype = encoder.clip_l.dtype
    parts, pooled = [], []
    for model, tokenizer in ((encoder.clip_l, encoder.clip_l_tokenizer), (encoder.clip_g, encoder.clip_g_tokenizer)):
        ids, weights = tokenizer.weighted(prompt)
        empty = [tokenizer.bos_id, tokenizer.eos_id] + [tokenizer.pad_id] * (ids.shape[1] - 2)
        z, first = _weigh(model, ids, weights, empty)
        parts.append(z)
        pooled.append(first)
    context = F.pad(torch.cat(parts, dim=-1), (0, encoder.context_dim - sum(p.shape[-1] for p in parts)))
    if encoder.t5 is not None:
        tokenizer = encoder.t5_tokenizer
        ids, weights = tokenizer.weighted(prompt)
        empty = [tokenizer.eos_id] + [tokenizer.pad_id] * (ids.shape[1] - 1)
        context = torch.cat([context, _weigh(encoder.t5, ids, weights, empty)[0]], dim=-2)
    return context.to(dtype), torch.cat(pooled, dim=-1).to(dtype)


def encode(encoder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts (b) -> context (b, L, context_dim) zero-padded to the longest, y (b, 2048), lengths (b,) int64."""
    encoded = [encode_prompt(encoder, prompt) for prompt in prompts]
    lengths = torch.tensor([c.shape[1] for c, _ in encoded], dtype=torch.long)
    longest = int(lengths.max())
    context = torch.cat([F.pad(c, (0, 0, 0, longest - c.shape[1])) for c, _ in encoded])
    return context, torch.cat([y for _, y in encoded]), lengths
