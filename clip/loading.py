"""Loading CLIP-L, CLIP-G and T5-XXL from all-in-one checkpoints or separate files.

All-in-one SD3 files hold each encoder under `text_encoders.{clip_l,clip_g,t5xxl}.transformer.`;
the SD3.5 repos ship `text_encoders/clip_l.safetensors`, `clip_g.safetensors` and
`t5xxl_fp16.safetensors` with no prefix. Both layouts use transformers' parameter names.
"""

from __future__ import annotations

import torch

from sd3.clip.config import CLIPConfig, T5Config
from sd3.clip.t5 import T5Encoder
from sd3.clip.text_model import CLIPTextModel
from sd3.checkpoint import CheckpointLike, open_checkpoint
from sd3.devices import resolve_device, resolve_dtype
from sd3.errors import ModelLoadingError
from sd3.loading import load_strict
from sd3.quant import compute_in

CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
CLIP_G_PREFIX = "text_encoders.clip_g.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
# Buffers some transformers versions saved; the model recomputes them.
_IGNORED = ("text_model.embeddings.position_ids",)


def _load_clip(
    source: CheckpointLike, prefix: str, what: str, dtype, device, **config: object
) -> CLIPTextModel:
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    with open_checkpoint(source) as checkpoint:
        tensors = checkpoint.component(prefix).without(*_IGNORED)
        if "text_projection" in tensors:  # OpenCLIP's bare projection, as ComfyUI's CLIPSave writes it
            if config.get("project_pooled") and "text_projection.weight" not in tensors:
                tensors = tensors.transposed("text_projection", "text_projection.weight")
            else:  # CLIP-L's pooled vector goes to SD3 unprojected
                tensors = tensors.without("text_projection")
        if config.get("project_pooled") and "text_projection.weight" not in tensors:
            raise ModelLoadingError(
                f"{what} checkpoint {tensors.description} has no text projection ('text_projection.weight', or "
                "OpenCLIP's bare 'text_projection'), which projects CLIP-G's pooled vector"
            )
        with torch.device("meta"):
            model = CLIPTextModel(CLIPConfig.from_state_dict(tensors.shapes(), **config))
        return load_strict(model, tensors, dtype=dtype, device=device, what=what)


def load_clip_l(
    source: CheckpointLike,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    hidden_act: str = "quick_gelu",
) -> CLIPTextModel:
    """Load CLIP-L (OpenAI ViT-L/14 text tower). Its pooled output is returned unprojected.

    Args:
        source: a `.safetensors` path or a dict of tensors, with the
            `text_encoders.clip_l.transformer.` prefix (all-in-one) or without (clip_l.safetensors).
        hidden_act: "quick_gelu", as CLIP-L was trained.

    Raises:
        ModelLoadingError: missing or unreadable file; missing, unexpected or mis-shaped keys.
    """
    return _load_clip(source, CLIP_L_PREFIX, "CLIP-L", dtype, device, hidden_act=hidden_act, project_pooled=False)


def load_clip_g(
    source: CheckpointLike,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    hidden_act: str = "gelu",
) -> CLIPTextModel:
    """Load CLIP-G (OpenCLIP ViT-bigG/14 text tower). Its pooled output goes through `text_projection`.

    Args:
        source: a `.safetensors` path or a dict of tensors, with the
            `text_encoders.clip_g.transformer.` prefix (all-in-one) or without (clip_g.safetensors).
        hidden_act: "gelu" (exact, as trained, as diffusers and Stability run it) or "gelu_tanh"
            (as Candle runs it).

    Raises:
        ModelLoadingError: missing or unreadable file; missing, unexpected or mis-shaped keys,
            including a missing `text_projection`.
    """
    return _load_clip(source, CLIP_G_PREFIX, "CLIP-G", dtype, device, hidden_act=hidden_act, project_pooled=True)


def load_t5(
    source: CheckpointLike,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
) -> T5Encoder:
    """Load the T5-XXL encoder.

    Args:
        source: a `.safetensors` path or a dict of tensors, with the
            `text_encoders.t5xxl.transformer.` prefix (all-in-one) or without (t5xxl_fp16.safetensors);
            the embedding may be stored as `shared.weight`, `encoder.embed_tokens.weight` or both.
            fp8 files (plain or scaled) and GGUF files (llama.cpp's T5 names) keep their fp8 or
            quantised tensors so in memory (sd3/quant/).
        dtype: float32 or bfloat16 run as asked; float16 keeps the `wo` projections in float32
            (see clip/t5.py), and the residual stream is float32 in every case.

    Raises:
        ModelLoadingError: missing or unreadable file; missing, unexpected or mis-shaped keys.
    """
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    with open_checkpoint(source) as checkpoint:
        tensors = checkpoint.component(T5_PREFIX)
        if "shared.weight" in tensors:  # the two names hold one tied embedding
            tensors = tensors.without("encoder.embed_tokens.weight")
        else:
            tensors = tensors.renamed({"encoder.embed_tokens.weight": "shared.weight"})
        with torch.device("meta"):
            model = T5Encoder(T5Config.from_state_dict(tensors.shapes()))
        model = load_strict(model, tensors, dtype=dtype, device=device, what="T5")
    if dtype == torch.float16:  # T5-XXL's feed-forward output overflows float16
        for block in model.encoder.block:
            compute_in(block.layer[1].DenseReluDense.wo, torch.float32)  # a quantised `wo` stays quantised
    return model
