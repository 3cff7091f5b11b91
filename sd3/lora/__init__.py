"""LoRA adapters for the MMDiT and the text encoders, in the formats users have, never a silent no-op.

    from sd3.lora import load_lora
    handle = load_lora("style.safetensors").apply({"mmdit": model}, scale=0.8)   # merged; handle.remove()
    pipe.add_lora("style.safetensors", scale=0.8)                                 # on a pipeline's models

Files: `formats.py` (reading the file: diffusers/PEFT, kohya, original names), `mapping.py` (each
key onto our modules), `apply.py` (merged or unmerged, strict). docs/lora.md lists the mappings.
"""

from sd3.lora.apply import LoRA, LoRAHandle, load_lora
from sd3.lora.formats import FORMATS, read_lora

__all__ = ["LoRA", "LoRAHandle", "load_lora", "read_lora", "FORMATS"]
