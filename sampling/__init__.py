"""Sampling: flow-matching schedules, CFG and SLG, Euler and DPM++(2M), and the text-to-image pipeline.

Mirrors Candle's stable-diffusion-3/sampling.rs and main.rs. Files: `schedules.py`, `guidance.py`,
`samplers.py`, `noise.py`, `reference.py` (the Candle / Stability / diffusers switch),
`variants.py`, `hub.py`, `memory.py`, `pipeline.py`.
"""

from sampling.guidance import Conditioning, GuidedVelocity, SkipLayerGuidanceConfig
from sampling.noise import initial_noise
from sampling.pipeline import GenerationResult, ModelFiles, StableDiffusion3
from sampling.reference import REFERENCES, Reference
from sampling.samplers import SAMPLERS, dpmpp_2m, euler
from sampling.schedules import SCHEDULES, explicit_sigmas, sigmas, time_snr_shift
from sampling.variants import TOKENIZERS, VARIANTS, Variant, variant

__all__ = [
    "Conditioning",
    "GuidedVelocity",
    "SkipLayerGuidanceConfig",
    "initial_noise",
    "GenerationResult",
    "ModelFiles",
    "StableDiffusion3",
    "REFERENCES",
    "Reference",
    "SAMPLERS",
    "dpmpp_2m",
    "euler",
    "SCHEDULES",
    "explicit_sigmas",
    "sigmas",
    "time_snr_shift",
    "TOKENIZERS",
    "VARIANTS",
    "Variant",
    "variant",
]
