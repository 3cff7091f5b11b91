"""Stable Diffusion 3 and 3.5 inference, written from scratch in PyTorch (arXiv 2403.03206).

    import sd3
    pipe = sd3.StableDiffusion3.from_variant("3.5-medium")
    pipe.generate(["a photo of a cat"], seed=0).images[0].save("cat.png")
    for r in pipe.generate_many(prompts, seed=0):  # many prompts, each image as soon as it is made
        r.image.save(f"{r.index:05d}.png")

The stages are sub-packages, one per step of the journey prompt -> image: `sd3.clip` (CLIP-L,
CLIP-G, T5-XXL), `sd3.mmdit` (the denoiser), `sd3.sampling` (schedules, guidance, samplers and the
pipeline) and `sd3.vae`; `sd3.lora` applies LoRA adapters, `sd3.quant` keeps fp8 and GGUF weights
quantised in memory (the loaders use it for such files), and `sd3.jobs` runs eval-scale jobs
(streaming, a manifest, resume, torchrun). `sd3.errors` holds the exception types, `sd3.checkpoint` and
`sd3.loading` read `.safetensors` and `.gguf` files into models, `sd3.devices` picks a device and a dtype.
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
from sd3.lora import load_lora
from sd3.mmdit import load_mmdit
from sd3.sampling import (
    VARIANTS,
    Conditioning,
    ControlInput,
    GenerationOptions,
    GenerationResult,
    ImageRequest,
    ImageResult,
    ModelFiles,
    Preview,
    PromptItem,
    Reference,
    SkipLayerGuidanceConfig,
    StableDiffusion3,
    StreamStats,
    Variant,
    image_requests,
)
from sd3.vae import load_vae

__all__ = [
    "StableDiffusion3",
    "Conditioning",
    "ControlInput",
    "GenerationOptions",
    "GenerationResult",
    "ImageResult",
    "ImageRequest",
    "image_requests",
    "PromptItem",
    "Preview",
    "StreamStats",
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
    "load_lora",
    "SD3Error",
    "ModelLoadingError",
    "ConfigurationError",
    "TextEncodingError",
    "SamplingError",
    "VAEDecodingError",
    "DeviceError",
]
