"""What every stage shares: the error types, checkpoint reading and device choice.

No stage package (`mmdit`, `clip`, `vae`, `sampling`) imports a sibling just to raise an error or
read a `.safetensors` file; they all import from here.
"""

from common.errors import (
    ConfigurationError,
    DeviceError,
    ModelLoadingError,
    SamplingError,
    SD3Error,
    TextEncodingError,
    VAEDecodingError,
)

__all__ = [
    "SD3Error",
    "ModelLoadingError",
    "ConfigurationError",
    "TextEncodingError",
    "SamplingError",
    "VAEDecodingError",
    "DeviceError",
]
