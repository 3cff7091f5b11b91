"""The MMDiT denoiser of Stable Diffusion 3 / 3.5 (arXiv 2403.03206), written from scratch.

    from sd3.mmdit import load_mmdit
    model = load_mmdit("sd3.5_medium.safetensors", dtype="bf16", device="cuda")
    v = model(x, t, y, context)  # x (b, 16, H/8, W/8), t = sigma * 1000 (b,), y (b, 2048), context (b, l, 4096)

Files: `config.py` (presets, inference from a checkpoint), `embeddings.py`, `attention.py`,
`blocks.py` (joint blocks, MMDiT-X, final layer), `model.py` (the forward), `loading.py`;
`controlnet.py` and `controlnet_loading.py` (SD3 ControlNets, whose residuals the forward adds).
"""

from sd3.mmdit.config import Config
from sd3.mmdit.controlnet import ControlNet, ControlNetConfig
from sd3.mmdit.controlnet_loading import load_controlnet
from sd3.mmdit.loading import PREFIX, load_mmdit
from sd3.mmdit.model import MMDiT

__all__ = ["Config", "MMDiT", "load_mmdit", "PREFIX", "ControlNet", "ControlNetConfig", "load_controlnet"]
