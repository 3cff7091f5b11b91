"""Random weights at a variant's real architecture, in the official file layout, cached on disk.

Names and shapes come from our own modules built on the meta device (tests check them against
diffusers' and transformers' full-size models), values from a seeded generator: every tensor
random and non-zero, matrices ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.02), biases ~ N(0, 0.02).
Stored in bfloat16, one file per component, so that writing needs one component in memory.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from sd3 import clip
from sd3 import mmdit
from sd3 import vae
from sd3.sampling import ModelFiles

VERSION = 1  # bump when the recipe changes, so that stale caches are rewritten


# Lookup tables, drawn N(0, 1): every other matrix is scaled by 1/sqrt(fan_in).
_TABLES = ("token_embedding.weight", "position_embedding.weight", "shared.weight", "pos_embed", "relative_attention_bias.weight")


def random_like(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    values = torch.randn(shape, generator=generator)
    if name.endswith(_TABLES):
        return values
    if len(shape) >= 2:
        return values * math.prod(shape[1:]) ** -0.5
    if "norm" in name or "ln_" in name:
        return 1 + 0.02 * values
    return 0.02 * values


def random_state(model: nn.Module, seed: int, prefix: str = "", rename=lambda name: name) -> dict[str, torch.Tensor]:
    """Random bfloat16 tensors for every entry of `model`'s state dict, under checkpoint names."""
    generator = torch.Generator().manual_seed(seed)
    return {
        prefix + rename(name): random_like(name, tuple(t.shape), generator).to(torch.bfloat16)
        for name, t in model.state_dict().items()
    }


def architectures(which: str, t5_layers: int = 2) -> dict[str, nn.Module]:
    """The models `write_random` fills, on the `meta` device: "mmdit", "vae", "clip_l", "clip_g", "t5"."""
    with torch.device("meta"):
        return {
            "mmdit": mmdit.MMDiT(mmdit.Config.preset(which)),
            "vae": vae.AutoEncoderKL(vae.VAEConfig.sd3()),
            "clip_l": clip.CLIPTextModel(clip.CLIPConfig.clip_l()),
            "clip_g": clip.CLIPTextModel(clip.CLIPConfig.clip_g()),
            "t5": clip.T5Encoder(replace(clip.T5Config.t5_xxl(), num_layers=t5_layers)),
        }


def write_random(which: str, cache: Path, *, t5_layers: int = 2, seed: int = 0) -> tuple[ModelFiles, dict]:
    """Write (once) random checkpoints of `which`'s real architecture; T5 keeps `t5_layers` of its 24.

    Returns the files (tokenizers are the small ones of sd3/testing/tiny/tokenizers.py, whose ids fit the
    real vocabularies) and a description of what was written.
    """
    from sd3.testing.tiny.tokenizers import save_clip_tokenizer_json, tiny_clip_tokenizer, tiny_t5_tokenizer

    folder = cache / f"{which}-t5x{t5_layers}-seed{seed}-v{VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    files = ModelFiles(
        checkpoint=folder / "mmdit_vae.safetensors", clip_l=folder / "clip_l.safetensors",
        clip_g=folder / "clip_g.safetensors", t5xxl=folder / "t5xxl.safetensors", vae=folder / "mmdit_vae.safetensors",
        clip_l_tokenizer=folder / "clip_tokenizer.json", clip_g_tokenizer=folder / "clip_tokenizer.json",
        t5_tokenizer=folder / "t5_tokenizer.json",
    )
    description = {"variant": which, "t5_layers": t5_layers, "seed": seed, "dtype": "bfloat16"}
    if (folder / "done.json").exists():
        return files, description
    parts = architectures(which, t5_layers)
    # As in the SD3.5 repos: MMDiT and VAE in one file, each text encoder in its own.
    save_file({**random_state(parts["mmdit"], seed, mmdit.PREFIX),
               **random_state(parts["vae"], seed + 1, vae.PREFIX, vae.checkpoint_name)}, str(files.checkpoint))
    for offset, (name, path) in enumerate((("clip_l", files.clip_l), ("clip_g", files.clip_g), ("t5", files.t5xxl))):
        save_file(random_state(parts[name], seed + 2 + offset), str(path))
    save_clip_tokenizer_json(tiny_clip_tokenizer()[0], files.clip_l_tokenizer)
    tiny_t5_tokenizer().backend_tokenizer.save(str(files.t5_tokenizer))
    (folder / "done.json").write_text(json.dumps(description))
    return files, description


def write_tiny(cache: Path, seed: int = 0) -> tuple[ModelFiles, dict]:
    """The tests' tiny all-in-one checkpoint (seconds to write and run): for tests and smoke runs."""
    from sd3.testing.tiny.pipeline import write_tiny_sd3

    tiny = write_tiny_sd3(cache / f"tiny-seed{seed}-v{VERSION}", seed=seed)
    c = tiny.checkpoint
    files = ModelFiles(c, c, c, c, c, tiny.clip_l_tokenizer, tiny.clip_g_tokenizer, tiny.t5_tokenizer)
    return files, {"variant": "tiny", "seed": seed, "dtype": "float32"}
