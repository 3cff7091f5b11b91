"""A tiny diffusers `StableDiffusion3Pipeline` and our matching components, on the same files.

Every component is a tiny random checkpoint in the real layout; diffusers' side is built with
explicit configs and its own converters, fully offline (docs/reference.md §7).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from sd3.clip import CLIP_G_PREFIX, CLIP_L_PREFIX, T5_PREFIX
from sd3.testing.tiny.mmdit import TinyMMDiT, diffusers_mmdit, mmdit_state_dict
from sd3.testing.tiny.text import TinyCLIP, TinyT5, clip_state_dict, t5_state_dict, transformers_clip, transformers_t5
from sd3.testing.tiny.tokenizers import save_clip_tokenizer_json, tiny_clip_tokenizer, tiny_t5_tokenizer
from sd3.testing.tiny.vae import diffusers_vae, vae_state_dict


@dataclass
class TinySD3:
    """Paths of one all-in-one tiny SD3 checkpoint and its tokenizer files, plus the architectures."""

    checkpoint: Path
    clip_l_tokenizer: Path
    clip_g_tokenizer: Path
    t5_tokenizer: Path
    clip_l: TinyCLIP
    clip_g: TinyCLIP
    t5: TinyT5
    mmdit: TinyMMDiT
    state_dict: dict[str, torch.Tensor]


def write_tiny_sd3(folder: Path, seed: int = 0, pos_embed_max_size: int = 8) -> TinySD3:
    """An all-in-one checkpoint (MMDiT, VAE, CLIP-L, CLIP-G, T5) and tokenizer.json files.

    `pos_embed_max_size` sets the largest image: 16 pixels per entry (64 reaches 1024).
    """
    clip_tok, clip_vocab = tiny_clip_tokenizer()
    t5_tok = tiny_t5_tokenizer()
    clip_l = TinyCLIP(vocab=clip_vocab)
    clip_g = TinyCLIP(vocab=clip_vocab, width=192, mlp=384, projection=True, act="gelu")
    t5 = TinyT5(vocab=len(t5_tok))
    mmdit = TinyMMDiT(depth=2, heads=2, adm=clip_l.width + clip_g.width, context_dim=t5.d_model,
                      pos_embed_max_size=pos_embed_max_size)
    state_dict = {
        **mmdit_state_dict(mmdit, seed=seed),
        **vae_state_dict(seed=seed + 1),
        **clip_state_dict(clip_l, prefix=CLIP_L_PREFIX, seed=seed + 2),
        **clip_state_dict(clip_g, prefix=CLIP_G_PREFIX, seed=seed + 3),
        **t5_state_dict(t5, prefix=T5_PREFIX, seed=seed + 4),
    }
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "sd3_tiny_incl_clips_t5.safetensors"
    save_file(state_dict, str(checkpoint))
    (folder / "clip_l").mkdir(exist_ok=True)
    (folder / "clip_g").mkdir(exist_ok=True)
    (folder / "t5").mkdir(exist_ok=True)
    save_clip_tokenizer_json(clip_tok, folder / "clip_l" / "tokenizer.json")
    save_clip_tokenizer_json(clip_tok, folder / "clip_g" / "tokenizer.json")
    t5_tok.backend_tokenizer.save(str(folder / "t5" / "tokenizer.json"))
    return TinySD3(
        checkpoint, folder / "clip_l" / "tokenizer.json", folder / "clip_g" / "tokenizer.json",
        folder / "t5" / "tokenizer.json", clip_l, clip_g, t5, mmdit, state_dict,
    )


def diffusers_pipeline(tiny: TinySD3, *, with_t5: bool = True, shift: float = 3.0):
    """diffusers' SD3 pipeline over the same weights and vocabularies.

    CLIP-L's tokenizer pads with EOS and CLIP-G's with "!", as in the stabilityai repos.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from sd3.testing.tiny.tokenizers import clip_vocab_and_merges, transformers_clip_tokenizer

    vocab, merges = clip_vocab_and_merges()
    sd = tiny.state_dict
    return StableDiffusion3Pipeline(
        transformer=diffusers_mmdit(tiny.mmdit, {k: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
        vae=diffusers_vae({k: v for k, v in sd.items() if k.startswith("first_stage_model.")}),
        text_encoder=transformers_clip(tiny.clip_l, sd, CLIP_L_PREFIX),
        tokenizer=transformers_clip_tokenizer(vocab, merges),
        text_encoder_2=transformers_clip(tiny.clip_g, sd, CLIP_G_PREFIX),
        tokenizer_2=transformers_clip_tokenizer(vocab, merges, pad_token="!"),
        text_encoder_3=transformers_t5(tiny.t5, sd) if with_t5 else None,
        tokenizer_3=tiny_t5_tokenizer() if with_t5 else None,
    )
