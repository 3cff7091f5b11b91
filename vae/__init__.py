"""The SD3 VAE (a 16-channel AutoencoderKL), written from scratch, with Candle's renaming map.

    from sd3.vae import load_vae, decode_latents, to_pil
    vae = load_vae("sd3.5_medium.safetensors")          # reads `first_stage_model.*`
    images = to_pil(decode_latents(vae, latents))        # latents (b, 16, h, w) in model space

Files: `config.py`, `rename.py` (diffusers-style name -> checkpoint name), `blocks.py`,
`model.py` (encoder, decoder), `loading.py`, `scaling.py` (SD3 latent scaling),
`tiling.py`, `images.py` (tensors <-> pixels), `taesd.py` and `taesd_loading.py` (TAESD3, the tiny
autoencoder).
"""

from sd3.vae.config import VAEConfig
from sd3.vae.images import from_pil, to_pil, to_uint8
from sd3.vae.loading import PREFIX, load_vae
from sd3.vae.model import AutoEncoderKL
from sd3.vae.rename import checkpoint_name
from sd3.vae.scaling import decode_latents, encode_images
from sd3.vae.taesd import TinyAutoencoder
from sd3.vae.taesd_loading import load_taesd

__all__ = [
    "VAEConfig",
    "AutoEncoderKL",
    "load_vae",
    "checkpoint_name",
    "decode_latents",
    "encode_images",
    "to_uint8",
    "to_pil",
    "from_pil",
    "PREFIX",
    "TinyAutoencoder",
    "load_taesd",
]
