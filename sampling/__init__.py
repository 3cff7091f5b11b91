"""Sampling and the pipeline: flow-matching schedules, CFG and SLG, the samplers, and text to image.

Mirrors Candle's stable-diffusion-3/sampling.rs and main.rs. Files: `schedules.py`, `guidance.py`,
`samplers.py`, `noise.py`, `img2img.py`, `reference.py` (the Candle / Stability / diffusers switch),
`variants.py`, `hub.py` (where the files come from), `options.py` (one call's checked settings),
`requests.py` (one request per image, the seed rule), `conditioning.py` (the text encoders' output),
`checks.py` (a request checked before anything loads), `components.py` (loaders and tokenizers),
`previews.py` (pictures of each step's x0), `control.py` (ControlNet inputs) and `control_maps.py`
(edge and blur maps from a photo),
`memory.py` (the memory check), `residency.py` (which models stay loaded), `lifecycle.py` (load,
time, keep or free, around each stage), `pipeline.py` (the public stages), `run.py` (the one place
they run in order) and `stream.py` (many prompts, streamed).
"""

from sd3.sampling.conditioning import Conditioning
from sd3.sampling.control import ControlInput
from sd3.sampling.guidance import GuidedVelocity, SkipLayerGuidanceConfig
from sd3.sampling.hub import FILE_NAMES, ModelFiles, model_files
from sd3.sampling.noise import initial_noise
from sd3.sampling.options import GenerationOptions
from sd3.sampling.pipeline import GenerationResult, StableDiffusion3
from sd3.sampling.previews import Preview
from sd3.sampling.reference import REFERENCES, Reference
from sd3.sampling.lifecycle import ModelLifecycle, Timings
from sd3.sampling.requests import ImageRequest, PromptItem, image_requests
from sd3.sampling.residency import KEEP
from sd3.sampling.samplers import SAMPLERS, Step, dpmpp_2m, euler
from sd3.sampling.stream import ImageResult, StreamStats, generate_many
from sd3.sampling.schedules import SCHEDULES, explicit_sigmas, sigmas, time_snr_shift
from sd3.sampling.variants import TOKENIZERS, VARIANTS, Variant, variant

__all__ = [
    "Conditioning",
    "ControlInput",
    "GuidedVelocity",
    "SkipLayerGuidanceConfig",
    "FILE_NAMES",
    "ModelFiles",
    "model_files",
    "initial_noise",
    "GenerationOptions",
    "GenerationResult",
    "StableDiffusion3",
    "Preview",
    "Step",
    "REFERENCES",
    "Reference",
    "KEEP",
    "ModelLifecycle",
    "Timings",
    "ImageRequest",
    "image_requests",
    "SAMPLERS",
    "dpmpp_2m",
    "euler",
    "SCHEDULES",
    "explicit_sigmas",
    "sigmas",
    "time_snr_shift",
    "ImageResult",
    "PromptItem",
    "StreamStats",
    "generate_many",
    "TOKENIZERS",
    "VARIANTS",
    "Variant",
    "variant",
]
