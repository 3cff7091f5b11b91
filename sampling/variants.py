"""The four SD3 / SD3.5 variants: where their files live and how Candle runs them by default.

From docs/reference.md §1 (Candle's `main.rs` `Which`). All stabilityai repos are gated: a user must
accept the licence on the repo's page and provide a token (HF_TOKEN or a saved login).

A pipeline knows its variant: `StableDiffusion3.generate` takes its steps, cfg, shift and the SLG
settings from it unless the caller gives them.
"""

from __future__ import annotations

from dataclasses import dataclass

from sd3.errors import ConfigurationError
from sd3.sampling.guidance import SkipLayerGuidanceConfig


@dataclass(frozen=True)
class HubFile:
    repo: str
    filename: str
    revision: str | None = None  # None: the revision the user asks for (or main)


@dataclass(frozen=True)
class Variant:
    which: str
    checkpoint: HubFile  # MMDiT and VAE (and, for 3-medium, the three text encoders)
    clip_l: HubFile
    clip_g: HubFile
    t5xxl: HubFile
    steps: int
    cfg: float
    shift: float = 3.0
    slg: SkipLayerGuidanceConfig | None = None  # used on request (slg=True); Candle allows it only here


def _text_encoders(repo: str) -> dict[str, HubFile]:
    return {
        "clip_l": HubFile(repo, "text_encoders/clip_l.safetensors"),
        "clip_g": HubFile(repo, "text_encoders/clip_g.safetensors"),
        "t5xxl": HubFile(repo, "text_encoders/t5xxl_fp16.safetensors"),
    }


_SD3_MEDIUM = HubFile("stabilityai/stable-diffusion-3-medium", "sd3_medium_incl_clips_t5xxlfp16.safetensors")
_LARGE, _TURBO = "stabilityai/stable-diffusion-3.5-large", "stabilityai/stable-diffusion-3.5-large-turbo"

VARIANTS = {
    "3-medium": Variant("3-medium", _SD3_MEDIUM, _SD3_MEDIUM, _SD3_MEDIUM, _SD3_MEDIUM, steps=28, cfg=4.0),
    "3.5-large": Variant(
        "3.5-large", HubFile(_LARGE, "sd3.5_large.safetensors"), **_text_encoders(_LARGE), steps=28, cfg=4.0
    ),
    "3.5-large-turbo": Variant(
        "3.5-large-turbo", HubFile(_TURBO, "sd3.5_large_turbo.safetensors"), **_text_encoders(_TURBO), steps=4, cfg=1.0
    ),
    # The medium repo ships only a sharded T5: its text encoders come from the large repo.
    "3.5-medium": Variant(
        "3.5-medium",
        HubFile("stabilityai/stable-diffusion-3.5-medium", "sd3.5_medium.safetensors"),
        **_text_encoders(_LARGE),
        steps=28,
        cfg=4.0,
        slg=SkipLayerGuidanceConfig(scale=2.5, start=0.01, end=0.2, layers=(7, 8, 9)),
    ),
}

# The tokenizer files Candle downloads.
TOKENIZERS = {
    "clip_l": HubFile("openai/clip-vit-large-patch14", "tokenizer.json"),
    "clip_g": HubFile("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "tokenizer.json"),
    "t5": HubFile("lmz/mt5-tokenizers", "t5-v1_1-xxl.tokenizer.json"),
}


def variant(which: str | Variant) -> Variant:
    """The variant named `which` ("3-medium", "3.5-large", "3.5-large-turbo", "3.5-medium")."""
    if isinstance(which, Variant):
        return which
    if which not in VARIANTS:
        raise ConfigurationError(f"unknown variant `which`='{which}'; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[which]
