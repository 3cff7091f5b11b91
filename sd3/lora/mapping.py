"""Where each LoRA key lands in our modules (the checkpoint's names), for the formats in use.

| format | a key | our module |
|---|---|---|
| diffusers / PEFT | `transformer.transformer_blocks.3.attn.to_q.lora_A.weight` | rows 0..d of `joint_blocks.3.x_block.attn.qkv` |
| kohya (sd-scripts, ComfyUI) | `lora_unet_joint_blocks_3_x_block_attn_qkv.lora_down.weight` | `joint_blocks.3.x_block.attn.qkv` |
| original names | `diffusion_model.joint_blocks.3.x_block.attn.qkv.lora_down.weight` | `joint_blocks.3.x_block.attn.qkv` |
| SimpleTuner | `transformer.transformer_blocks.3.attn.to_q.lora.down.weight` | as diffusers |
| PEFT, transformer alone | `base_model.model.transformer_blocks.3.attn.to_q.lora_A.weight` | as diffusers |
| OneTrainer | `lora_transformer_transformer_blocks_3_attn_to_q.lora_down.weight` | as diffusers (`lora_te1_` … as kohya) |

Text encoders: diffusers `text_encoder.` (CLIP-L), `text_encoder_2.` (CLIP-G); kohya `lora_te1_`,
`lora_te2_`, `lora_te3_` (T5), each followed by the transformers module name, which is ours too.

diffusers splits what the checkpoint fuses, so its q, k and v land on row blocks of our `qkv`
(q first). Two of its modulations store (scale, shift) where the checkpoint stores (shift, scale):
the last block's `norm1_context.linear` and `norm_out.linear`; their deltas swap halves.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# diffusers' SD3 module (after `transformer_blocks.N.`) -> (our module after `joint_blocks.N.`, its qkv part)
DIFFUSERS_BLOCK_MODULES = {
    "attn.to_q": ("x_block.attn.qkv", 0), "attn.to_k": ("x_block.attn.qkv", 1), "attn.to_v": ("x_block.attn.qkv", 2),
    "attn.add_q_proj": ("context_block.attn.qkv", 0), "attn.add_k_proj": ("context_block.attn.qkv", 1),
    "attn.add_v_proj": ("context_block.attn.qkv", 2),
    "attn.to_out.0": ("x_block.attn.proj", None), "attn.to_add_out": ("context_block.attn.proj", None),
    "attn2.to_q": ("x_block.attn2.qkv", 0), "attn2.to_k": ("x_block.attn2.qkv", 1), "attn2.to_v": ("x_block.attn2.qkv", 2),
    "attn2.to_out.0": ("x_block.attn2.proj", None),
    "ff.net.0.proj": ("x_block.mlp.fc1", None), "ff.net.2": ("x_block.mlp.fc2", None),
    "ff_context.net.0.proj": ("context_block.mlp.fc1", None), "ff_context.net.2": ("context_block.mlp.fc2", None),
    "norm1.linear": ("x_block.adaLN_modulation.1", None),
    "norm1_context.linear": ("context_block.adaLN_modulation.1", None),
}
# diffusers' SD3 modules outside the blocks -> ours
_TOP = {
    "proj_out": "final_layer.linear", "norm_out.linear": "final_layer.adaLN_modulation.1",
    "context_embedder": "context_embedder",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
}
_DIFFUSERS_COMPONENTS = {"transformer": "mmdit", "text_encoder": "clip_l", "text_encoder_2": "clip_g",
                         "text_encoder_3": "t5"}
KOHYA_COMPONENTS = {"lora_unet": "mmdit", "lora_te1": "clip_l", "lora_te2": "clip_g", "lora_te3": "t5"}


@dataclass(frozen=True)
class Target:
    """One of our modules a LoRA module writes to."""

    component: str  # "mmdit", "clip_l", "clip_g", "t5"
    module: str  # our module name, e.g. "joint_blocks.3.x_block.attn.qkv"
    qkv_part: int | None = None  # which third of a fused qkv's output rows: 0 q, 1 k, 2 v; None: every row
    swap_halves: bool = False  # diffusers' (scale, shift) against the checkpoint's (shift, scale)


def diffusers_target(name: str, depth: int) -> Target | None:
    """`transformer.transformer_blocks.3.attn.to_q` (a diffusers module name) -> our target, or None."""
    component, _, rest = name.partition(".")
    if component not in _DIFFUSERS_COMPONENTS:
        return None
    if component != "transformer":
        return Target(_DIFFUSERS_COMPONENTS[component], rest)
    if rest in _TOP:
        return Target("mmdit", _TOP[rest], swap_halves=rest == "norm_out.linear")
    found = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", rest)
    if not found or found.group(2) not in DIFFUSERS_BLOCK_MODULES:
        return None
    index, (ours, qkv_part) = int(found.group(1)), DIFFUSERS_BLOCK_MODULES[found.group(2)]
    last_context = found.group(2) == "norm1_context.linear" and index == depth - 1
    return Target("mmdit", f"joint_blocks.{index}.{ours}", qkv_part, swap_halves=last_context)


def onetrainer_target(name: str, depth: int, lookup: dict[str, dict[str, str]]) -> Target | None:
    """`lora_transformer_transformer_blocks_3_attn_to_q` (diffusers' module name with underscores, as
    OneTrainer writes it; LyCORIS writes `lycoris_transformer_blocks_3_attn_to_q`) -> our target; the
    `lora_te1_`/`te2_`/`te3_` modules are kohya's."""
    prefix = next((p for p in ("lora_transformer_", "lycoris_") if name.startswith(p)), None)
    if prefix is None:
        return kohya_target(name, lookup)
    if not depth:  # the MMDiT is not among the models: its modules are passed over, unresolved
        return Target("mmdit", name)
    dotted = _diffusers_names(depth).get(name.removeprefix(prefix))
    return diffusers_target("transformer." + dotted, depth) if dotted else None


@functools.cache
def _diffusers_names(depth: int) -> dict[str, str]:
    """diffusers' SD3 transformer module names with underscores -> with dots, for `depth` blocks."""
    names = [f"transformer_blocks.{i}.{module}" for i in range(depth) for module in DIFFUSERS_BLOCK_MODULES] + list(_TOP)
    return {name.replace(".", "_"): name for name in names}


def kohya_lookup(modules: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """component -> {module name with underscores: module name}, for `kohya_target`."""
    return {component: {name.replace(".", "_"): name for name in names} for component, names in modules.items()}


def kohya_target(name: str, lookup: dict[str, dict[str, str]]) -> Target | None:
    """`lora_unet_joint_blocks_3_x_block_attn_qkv` -> our target. A component that is not in
    `lookup` (not loaded) keeps the file's name, unresolved; None when a loaded one has no match."""
    for prefix, component in KOHYA_COMPONENTS.items():
        if name.startswith(prefix + "_"):
            if component not in lookup:
                return Target(component, name)
            module = lookup[component].get(name[len(prefix) + 1 :])
            return Target(component, module) if module else None
    return None
