"""SD3's text encoders, written from scratch: CLIP-L, CLIP-G, T5-XXL and their combination.

    from sd3.clip import load_clip_l, load_clip_g, load_t5, CLIPTokenizer, T5Tokenizer, TripleTextEncoder
    encoder = TripleTextEncoder(
        load_clip_l(path), CLIPTokenizer("clip_l/tokenizer.json"),
        load_clip_g(path), CLIPTokenizer("clip_g/tokenizer.json", pad_token="!"),
        load_t5(path, dtype="bf16"), T5Tokenizer("t5/tokenizer.json", max_length=77),
    )
    context, y = encoder.encode(["a photo of a cat"])  # (1, 154, 4096), (1, 2048)

Mirrors Candle's stable-diffusion-3/clip.rs. Files: `config.py`, `text_model.py` (CLIP), `t5.py`,
`loading.py`, `tokenizer.py`, `triple.py`.
"""

from sd3.clip.config import CLIPConfig, T5Config
from sd3.clip.loading import CLIP_G_PREFIX, CLIP_L_PREFIX, T5_PREFIX, load_clip_g, load_clip_l, load_t5
from sd3.clip.t5 import T5Encoder
from sd3.clip.text_model import CLIPTextModel
from sd3.clip.tokenizer import CLIPTokenizer, T5Tokenizer
from sd3.clip.triple import TripleTextEncoder

__all__ = [
    "CLIPConfig",
    "T5Config",
    "CLIPTextModel",
    "T5Encoder",
    "load_clip_l",
    "load_clip_g",
    "load_t5",
    "CLIPTokenizer",
    "T5Tokenizer",
    "TripleTextEncoder",
    "CLIP_L_PREFIX",
    "CLIP_G_PREFIX",
    "T5_PREFIX",
]
