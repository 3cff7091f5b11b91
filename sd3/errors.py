"""The project's exception types.

Anything a user or a file can get wrong raises one of these, with a message that says what was
wrong and what to do about it. The command line turns them into a one-line message and a
non-zero exit; library users can catch `SD3Error` to handle them all.
"""


class SD3Error(Exception):
    """Base class of every error this project raises on purpose."""


class ModelLoadingError(SD3Error):
    """A checkpoint could not be read or does not match the model (missing, corrupt, wrong keys)."""


class ConfigurationError(SD3Error, ValueError):
    """A setting or an input shape is outside what the model or the pipeline supports."""


class TextEncodingError(SD3Error):
    """Tokenization or text encoding failed (missing tokenizer file, bad prompt input)."""


class SamplingError(SD3Error):
    """The denoising loop cannot run or produced unusable latents (NaN, inf, bad schedule)."""


class VAEDecodingError(SD3Error):
    """Latents could not be decoded to an image, or an image encoded to latents."""


class DeviceError(SD3Error):
    """The requested device or dtype is not available on this machine."""
