"""What the MMDiT is conditioned on, as the text encoders leave it: saved, loaded and indexed.

`StableDiffusion3.encode` returns a `Conditioning` (diffusers calls its tensors `prompt_embeds`,
`pooled_prompt_embeds` and their `negative_` twins). Encode a prompt list once, save it, and
sample from it as often as wanted with `generate(..., conditioning=...)`: the text encoders
(~11 GB with T5) never load again.

    conditioning = pipe.encode(["a cat", "a dog"], ["blurry", ""])
    conditioning.save("cats_and_dogs.safetensors")
    pipe.generate(conditioning=Conditioning.load("cats_and_dogs.safetensors"), seed=7)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from sd3.checkpoint import open_checkpoint
from sd3.errors import ConfigurationError

NAMES = ("context", "y", "negative_context", "negative_y")
LENGTHS = ("lengths", "negative_lengths")


@dataclass(frozen=True)
class Conditioning:
    """Conditioning for n prompts and their negative prompts (paper §3, Fig. 2a).

    Attributes:
        context: (n, l, 4096) token features: CLIP-L ‖ CLIP-G penultimate states padded to 4096,
            then T5's (l = 77 + the T5 length).
        y: (n, 2048) pooled vector: CLIP-L's pooled ‖ CLIP-G's projected pooled.
        negative_context, negative_y: the same for the negative prompts.
        lengths, negative_lengths: (n,) int64 on the CPU, each row's real context length when the
            rows differ (ComfyUI's long prompts: clip/weighted.py), the rest being zero padding; None
            when every row is l long. The model sees each row at its own length.

    The four tensors share a dtype (the text encoders' compute dtype) and a device.

    Raises:
        ConfigurationError: tensors whose shapes do not fit together, or of mixed dtypes or devices.
    """

    context: torch.Tensor
    y: torch.Tensor
    negative_context: torch.Tensor
    negative_y: torch.Tensor
    lengths: torch.Tensor | None = None
    negative_lengths: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.context.shape[0]
        if (self.context.ndim != 3 or self.y.ndim != 2 or self.negative_context.shape != self.context.shape
                or self.negative_y.shape != self.y.shape or self.y.shape[0] != n):
            shapes = ", ".join(f"{name} {tuple(getattr(self, name).shape)}" for name in NAMES)
            raise ConfigurationError(
                f"a `conditioning` needs context (n, l, d), y (n, p) and negatives of the same shapes; got {shapes}"
            )
        kinds = {(getattr(self, name).dtype, getattr(self, name).device) for name in NAMES}
        if len(kinds) > 1:
            raise ConfigurationError(f"a `conditioning`'s four tensors must share a dtype and a device; got {kinds}")
        given = [getattr(self, name) for name in LENGTHS if getattr(self, name) is not None]
        if given and (len(given) != 2 or any(
                not isinstance(t, torch.Tensor) or t.shape != (n,) or t.dtype != torch.long or int(t.min()) < 1 or int(t.max()) > self.context.shape[1]
                for t in given)):
            raise ConfigurationError(
                f"a `conditioning`'s `lengths` and `negative_lengths` come together, each ({n},) int64 between 1 "
                f"and the context length {self.context.shape[1]}"
            )

    def __len__(self) -> int:
        return self.context.shape[0]

    def rows(self, index: torch.Tensor | list[int] | slice) -> Conditioning:
        """The conditioning of the rows `index` (one per image: prompts repeat for several images)."""
        lengths = [None if getattr(self, name) is None else getattr(self, name)[index] for name in LENGTHS]
        return Conditioning(*(getattr(self, name)[index] for name in NAMES), *lengths)

    def to(self, device: torch.device | str) -> Conditioning:
        return Conditioning(*(getattr(self, name).to(device) for name in NAMES), self.lengths, self.negative_lengths)

    def zero_negative(self) -> Conditioning:
        """The negative context and pooled vector zeroed, at the negative prompts' lengths: ComfyUI's
        `ConditioningZeroOut` (nodes.py) on the negative conditioning."""
        return replace(self, negative_context=torch.zeros_like(self.negative_context),
                       negative_y=torch.zeros_like(self.negative_y))

    def save(self, path: str | os.PathLike) -> None:
        """Write the four tensors to a `.safetensors` file, atomically (a temporary name, then a rename)."""
        path = Path(path)
        if not path.parent.is_dir():
            raise ConfigurationError(f"cannot save the conditioning to {path}: the folder {path.parent} does not exist")
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tensors = {name: getattr(self, name) for name in NAMES + LENGTHS if getattr(self, name) is not None}
            save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, str(temporary),
                      metadata={"format": "sd3-conditioning"})
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Conditioning:
        """Read what `save` wrote (on the CPU, in the dtype it was saved in).

        Raises:
            ConfigurationError: no such `.safetensors` file, or it lacks one of the four tensors, or
                their shapes do not fit.
            ModelLoadingError: the file is not readable safetensors.
        """
        if not Path(path).is_file() or Path(path).suffix.lower() != ".safetensors":
            raise ConfigurationError(f"`conditioning` {path}: no such .safetensors file (Conditioning.save writes one)")
        with open_checkpoint(path) as tensors:
            missing = [name for name in NAMES if name not in tensors]
            if missing:
                raise ConfigurationError(
                    f"`conditioning` {path} lacks {', '.join(missing)}: it is not a file written by Conditioning.save"
                )
            lengths = [tensors.tensor(name).clone() if name in tensors else None for name in LENGTHS]
            return cls(*(tensors.tensor(name).clone() for name in NAMES), *lengths)
