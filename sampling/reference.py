"""The `reference` switch: every point where Candle, Stability, diffusers and ComfyUI disagree, set at once.

docs/reference.md §6 lists the points. `Reference.named("candle")` etc. set all of them to one
implementation's behaviour ("comfyui": its KSampler, CLIPTextEncode, EmptySD3LatentImage and
SaveImage); `dataclasses.replace` (or the command line's individual options)
overrides single points.

Our default ("default") mirrors Candle except where Candle departs from how the model was trained
or from numerical care:
- CLIP-L is padded with EOS, as Stability's reference code (and the training setup it encodes) does,
  not with "!";
- CLIP-G uses the exact GELU it was trained with, not Candle's tanh approximation;
- the unconditional pass is skipped at cfg = 1, where it cannot change the result;
- latents stay float32 between steps (Stability), where Candle keeps them in the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

from sd3.clip.tokenizer import CLIP_LENGTH, MAX_CLIP_CHUNKS, MAX_T5_TOKENS, RULES
from sd3.errors import ConfigurationError
from sd3.vae.images import ROUNDING as PIXEL_ROUNDING

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class Reference:
    """How one implementation conditions and samples (names as in docs/reference.md §6)."""

    name: str
    clip_l_pad: str = EOS  # CLIP-L pad token
    clip_g_pad: str = "!"  # CLIP-G pad token (id 0 everywhere)
    clip_g_gelu: str = "gelu"  # "gelu" (exact) or "gelu_tanh"
    t5_length: int = 77
    t5_truncate: bool = True  # False: at least t5_length tokens, never cut (Stability), at most MAX_T5_TOKENS
    prompt_rules: str = "plain"  # "stability": its weight syntax, word-wise CLIP chunks, T5's 226 characters;
    # "comfyui": weights applied, every CLIP chunk kept, no T5 rows without T5 (clip/weighted.py)
    schedule: str = "candle"  # see sampling/schedules.py
    noise: str = "per_image"  # "per_image": image k's own seed; "batch": row k of one stream from the seed (ComfyUI)
    noise_scaling: bool = False  # start text to image at σ0·noise + (1 − σ0)·(empty latent), as ComfyUI
    pixel_rounding: str = "round"  # 8-bit pixels rounded (diffusers, Stability) or "truncate"d (ComfyUI's SaveImage)
    uncond_first: bool = False  # CFG batch order [uncond, cond] (diffusers) vs [cond, uncond]
    uncond_at_cfg_one: bool = False  # run the unconditional pass even at cfg = 1
    round_latents: bool = False  # round latents to the model dtype after every step
    img2img_start: str = "diffusers"  # how strength picks the first step: "diffusers" or "stability"
    posterior: str = "mean"  # image to image's x0: the VAE posterior's "mean", or a "sample" (diffusers)
    inpaint_decode_shift: bool = True  # False: decode inpainted latents without the shift (diffusers)
    control_pixels: str = "stability"  # a control image's pixel values: Stability's per type, or "diffusers" (2x - 1)
    control_after_last_block: bool = True  # False: no ControlNet residual after the last block (diffusers)

    def __post_init__(self) -> None:
        if not 1 <= self.t5_length <= MAX_T5_TOKENS:
            raise ConfigurationError(f"`t5_length` must be between 1 and {MAX_T5_TOKENS} tokens, got {self.t5_length}")
        for name, value, allowed in (("prompt_rules", self.prompt_rules, RULES), ("noise", self.noise, NOISE),
                                     ("pixel_rounding", self.pixel_rounding, PIXEL_ROUNDING)):
            if value not in allowed:
                raise ConfigurationError(f"unknown `{name}` {value!r}; choose one of {', '.join(allowed)}")

    @property
    def t5_rows(self) -> int:
        """The most T5 rows a prompt can make: the T5 length, or untruncated, the bound MAX_T5_TOKENS."""
        return self.t5_length if self.t5_truncate else MAX_T5_TOKENS

    @property
    def clip_rows(self) -> int:
        """The most CLIP rows a prompt can make: one 77-token chunk, or under ComfyUI's rules MAX_CLIP_CHUNKS."""
        return CLIP_LENGTH * (MAX_CLIP_CHUNKS if self.prompt_rules == "comfyui" else 1)

    @classmethod
    def named(cls, name: str | Reference) -> Reference:
        """The preset `name` ("default", "candle", "stability", "diffusers", "comfyui"); a Reference as it is."""
        if isinstance(name, Reference):
            return name
        if name not in REFERENCES:
            raise ConfigurationError(f"unknown `reference` '{name}'; choose one of {', '.join(REFERENCES)}")
        return REFERENCES[name]


NOISE = ("per_image", "batch")

REFERENCES = {
    "default": Reference("default"),
    "candle": Reference("candle", clip_l_pad="!", clip_g_gelu="gelu_tanh", uncond_at_cfg_one=True, round_latents=True),
    "stability": Reference("stability", t5_truncate=False, prompt_rules="stability", schedule="stability",
                           uncond_at_cfg_one=True, img2img_start="stability"),
    "diffusers": Reference("diffusers", t5_length=256, schedule="diffusers", uncond_first=True, round_latents=True,
                           posterior="sample", inpaint_decode_shift=False, control_pixels="diffusers",
                           control_after_last_block=False),
    # ComfyUI's KSampler with its default scheduler, CLIPTextEncode, EmptySD3LatentImage and SaveImage
    "comfyui": Reference("comfyui", t5_truncate=False, prompt_rules="comfyui", schedule="simple", uncond_first=True,
                         noise="batch", noise_scaling=True, pixel_rounding="truncate"),
}
