"""A pipeline's components: how each model loads, its tokenizers, and its models' architectures.

Every model is read from the pipeline's files (sampling/hub.py `ModelFiles`) in its compute dtype;
a file it does not have (no T5, no TAESD3) has no loader. The architectures, built on the `meta`
device from the file headers alone, let a LoRA be checked against the models before any loads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sd3 import clip, mmdit
from sd3 import vae as vae_lib
from sd3.sampling.hub import ModelFiles
from sd3.sampling.reference import Reference


class Components:
    """Loaders, tokenizers and architectures for `files`, in `dtype`, as `reference` sets them up."""

    def __init__(self, files: ModelFiles, dtype: torch.dtype, reference: Reference) -> None:
        self.files, self.dtype, self.reference = files, dtype, reference
        self._tokenizers: dict[str, object] = {}
        self._architectures: dict[str, nn.Module] | None = None

    def loaders(self, device: torch.device) -> dict[str, Callable[[], nn.Module]]:
        """Model name ("clip_l", "clip_g", "t5", "mmdit", "vae", "taesd") -> a function loading it on `device`."""
        files, dtype, ref = self.files, self.dtype, self.reference
        loaders = {
            "clip_l": lambda: clip.load_clip_l(files.clip_l, dtype=dtype, device=device),
            "clip_g": lambda: clip.load_clip_g(files.clip_g, dtype=dtype, device=device, hidden_act=ref.clip_g_gelu),
            "t5": lambda: clip.load_t5(files.t5xxl, dtype=dtype, device=device),
            "mmdit": lambda: mmdit.load_mmdit(files.checkpoint, dtype=dtype, device=device),
            "vae": lambda: vae_lib.load_vae(files.vae, dtype=dtype, device=device),
            "taesd": lambda: vae_lib.load_taesd(files.taesd, dtype=dtype, device=device),
        }
        if files.t5xxl is None:
            del loaders["t5"]
        if files.taesd is None:
            del loaders["taesd"]
        return loaders

    def tokenizers(self) -> dict[str, object]:
        """"clip_l", "clip_g" and "t5" (None without T5), with the reference's padding and T5 length; read once."""
        ref, files = self.reference, self.files
        if not self._tokenizers:
            self._tokenizers = {
                "clip_l": clip.CLIPTokenizer(files.clip_l_tokenizer, pad_token=ref.clip_l_pad, rules=ref.prompt_rules),
                "clip_g": clip.CLIPTokenizer(files.clip_g_tokenizer, pad_token=ref.clip_g_pad, rules=ref.prompt_rules),
                "t5": clip.T5Tokenizer(files.t5_tokenizer, max_length=ref.t5_length, truncate=ref.t5_truncate,
                                       rules=ref.prompt_rules)
                if files.t5xxl is not None else None,
            }
        return self._tokenizers

    def architectures(self) -> dict[str, nn.Module]:
        """The models a LoRA can adapt, on the `meta` device: built from the file headers, no weight read."""
        if self._architectures is None:
            self._architectures = {name: load() for name, load in self.loaders(torch.device("meta")).items()
                                   if name not in ("vae", "taesd")}
        return self._architectures
