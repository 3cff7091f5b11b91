"""Stable Diffusion 3 and 3.5 inference, written from scratch in PyTorch (arXiv 2403.03206).

    import sd3
    pipe = sd3.StableDiffusion3.from_variant("3.5-medium")
    pipe.generate(["a photo of a cat"], seed=0).images[0].save("cat.png")

The stages are sub-packages, one per step of the journey prompt -> image: `sd3.clip` (CLIP-L,
CLIP-G, T5-XXL), `sd3.mmdit` (the denoiser), `sd3.sampling` (schedules, guidance, samplers and the
pipeline) and `sd3.vae`. `sd3.errors` holds the exception types, `sd3.checkpoint` and
`sd3.loading` read `.safetensors` files into models, `sd3.devices` picks a device and a dtype.
`sd3.testing` (with the `[test]` extra) writes tiny checkpoints and runs the parity audit and the
benchmark. `docs/reference.md` gathers the facts the code relies on.
"""

from sd3.clip import load_clip_g, load_clip_l, load_t5
from sd3.errors import (
    ConfigurationError,
    DeviceError,
    ModelLoadingError,
    SamplingError,
    SD3Error,
    TextEncodingError,
    VAEDecodingError,
)
from sd3.mmdit import load_mmdit
from sd3.sampling import (
    VARIANTS,
    GenerationOptions,
    GenerationResult,
    ModelFiles,
    Reference,
    SkipLayerGuidanceConfig,
    StableDiffusion3,
    Variant,
)
from sd3.vae import load_vae

__all__ = [
    "StableDiffusion3",
    "GenerationOptions",
    "GenerationResult",
    "ModelFiles",
    "Reference",
    "SkipLayerGuidanceConfig",
    "Variant",
    "VARIANTS",
    "load_mmdit",
    "load_clip_l",
    "load_clip_g",
    "load_t5",
    "load_vae",
    "SD3Error",
    "ModelLoadingError",
    "ConfigurationError",
    "TextEncodingError",
    "SamplingError",
    "VAEDecodingError",
    "DeviceError",
]
