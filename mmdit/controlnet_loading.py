"""Loading an SD3 ControlNet from Stability's files or diffusers' `SD3ControlNetModel` files.

Stability's SD3.5-large nets (`sd3.5_large_controlnet_{blur,canny,depth}.safetensors`) name their
blocks as our `DiTBlock` does (`transformer_blocks.N.attn.qkv`, `adaLN_modulation.1`, `mlp.fc1`) and
their embedders as diffusers does (`time_text_embed.timestep_embedder.linear_1`, `pos_embed.proj`);
Stability's own loader renames the embedders (sd3_infer.py, `CONTROLNET_MAP`), and so does `_TOP`
here. diffusers' files (InstantX, alimama; and Stability's nets as diffusers converted them) name
their blocks as diffusers' `JointTransformerBlock` does, with q, k and v apart: they are renamed with
the LoRA mapping's table (sd3/lora/mapping.py) and q, k, v stacked into our fused `qkv`.
"""

from __future__ import annotations

import re

import torch

from sd3.checkpoint import CheckpointLike, open_checkpoint
from sd3.devices import resolve_device, resolve_dtype
from sd3.errors import ModelLoadingError
from sd3.loading import load_strict
from sd3.lora.mapping import DIFFUSERS_BLOCK_MODULES
from sd3.mmdit.config import Config
from sd3.mmdit.controlnet import ControlNet, ControlNetConfig
from sd3.tensor_source import TensorSource

# The file's top-level names -> ours (both layouts).
_TOP = {
    "pos_embed.proj": "x_embedder.proj",
    "pos_embed.pos_embed": "pos_embed",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
}
# diffusers' per-head norms, which LoRAs never target.
_NORMS = {"attn.norm_q": ("x_block.attn.ln_q", None), "attn.norm_k": ("x_block.attn.ln_k", None),
          "attn.norm_added_q": ("context_block.attn.ln_q", None), "attn.norm_added_k": ("context_block.attn.ln_k", None)}
_DIFFUSERS_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(.+)\.(weight|bias)$")
# Tensors that say a file is another model's ControlNet, and whose.
_FOREIGN = {"controlnet_x_embedder": "a Flux ControlNet", "single_transformer_blocks": "a Flux ControlNet",
            "controlnet_down_blocks": "an SD 1.x/SDXL ControlNet", "input_blocks": "an SD 1.x/SDXL ControlNet",
            "control_model.": "an SD 1.x/SDXL ControlNet", "zero_convs": "an SD 1.x/SDXL ControlNet",
            "model.diffusion_model.": "a base model checkpoint"}


def load_controlnet(
    source: CheckpointLike,
    base: Config,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
) -> ControlNet:
    """Load a ControlNet for the MMDiT whose config is `base`, its kind read off the file.

    Args:
        source: a `.safetensors` path (or a dict of tensors) in Stability's or diffusers' names.
        base: the base model's config (`MMDiT.config`): the net must match its width and patch size,
            and Stability's kinds are told apart by its pooled width.
        dtype, device: as `load_mmdit`.

    Returns:
        The model in eval mode; `model.config.kind` says which kind was found.

    Raises:
        ModelLoadingError: not an SD3 ControlNet (another model's, named), or missing, unexpected or
            mis-shaped tensors.
        ConfigurationError: a ControlNet for another width or patch size than `base`'s.
    """
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    with open_checkpoint(source) as checkpoint:
        check_is_controlnet(checkpoint)
        if any(_DIFFUSERS_BLOCK.match(k) and ".attn.to_q." in k for k in checkpoint.keys()):
            ours = _from_diffusers(checkpoint, dtype, read=device.type != "meta")
            with open_checkpoint(ours) as renamed:
                return _load(renamed, base, dtype, device, lambda name: name)
        file_name = {ours: theirs for theirs, ours in _TOP.items()}
        return _load(checkpoint, base, dtype, device, lambda name: _renamed(name, file_name))


def check_is_controlnet(checkpoint: TensorSource) -> None:
    """Refuse, naming what it is, a file that is not an SD3 ControlNet."""
    keys = checkpoint.keys()
    for marker, what in _FOREIGN.items():
        if any(key.startswith(marker) or f".{marker}" in key for key in keys):
            raise ModelLoadingError(f"{checkpoint.description} is {what} (it has '{marker}' tensors), not an SD3 ControlNet")
    if not any(key.startswith("controlnet_blocks.") for key in keys):
        raise ModelLoadingError(f"{checkpoint.description} is not an SD3 ControlNet: it has no 'controlnet_blocks.' tensors")


def _renamed(name: str, table: dict[str, str]) -> str:
    for prefix, replacement in table.items():
        if name == prefix or name.startswith(prefix + "."):
            return replacement + name[len(prefix) :]
    return name


def _load(checkpoint: TensorSource, base: Config, dtype, device, to_file) -> ControlNet:
    our_shapes = {_renamed(key, _TOP): shape for key, shape in checkpoint.shapes().items()}
    config = ControlNetConfig.from_state_dict(our_shapes, base)
    with torch.device("meta"):
        model = ControlNet(config)
    return load_strict(model, checkpoint, dtype=dtype, device=device, what="ControlNet", to_checkpoint_name=to_file)


def _from_diffusers(checkpoint: TensorSource, dtype: torch.dtype, read: bool = True) -> dict[str, torch.Tensor]:
    """diffusers' names -> ours, reading every tensor (in `dtype`) and stacking q, k, v into `qkv`;
    with `read` False, shapes only (on the `meta` device), so that checking a file reads no weight."""
    joint = "context_embedder.weight" in checkpoint

    def tensor(key: str) -> torch.Tensor:
        return checkpoint.tensor(key, dtype) if read else torch.empty(checkpoint.shape(key), device="meta", dtype=dtype)

    table = {**DIFFUSERS_BLOCK_MODULES, **_NORMS}
    out, parts = {}, {}
    for key in checkpoint.keys():
        match = _DIFFUSERS_BLOCK.match(key)
        if match is None:
            out[_renamed(key, _TOP)] = tensor(key)
            continue
        block, module, kind = match.groups()
        if module not in table:
            raise ModelLoadingError(f"{checkpoint.description}: '{key}' is not a tensor of an SD3 ControlNet block")
        target, part = table[module]
        if not joint:  # Stability's nets as diffusers converted them: one stream, our DiTBlock's names
            target = target.removeprefix("x_block.")
        name = f"transformer_blocks.{block}.{target}.{kind}"
        if part is None:
            out[name] = tensor(key)
        else:
            parts.setdefault(name, {})[part] = tensor(key)
    for name, pieces in parts.items():
        if sorted(pieces) != [0, 1, 2]:
            raise ModelLoadingError(f"{checkpoint.description}: '{name}' needs q, k and v; the file has {len(pieces)} of them")
        out[name] = torch.cat([pieces[0], pieces[1], pieces[2]])
    return out
