"""Which of our modules corresponds to which module of the reference, and how to compare them.

A pair names a module on each side (ours by the component name `StableDiffusion3` gives it on load,
the reference by the diffusers pipeline attribute), which output to take when a module returns a
tuple, and where it sits for the plot (a stream and a depth).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Our component name -> the diffusers pipeline attribute holding its counterpart.
REFERENCE_COMPONENT = {"clip_l": "text_encoder", "clip_g": "text_encoder_2", "t5": "text_encoder_3",
                       "mmdit": "transformer", "vae": "vae"}


@dataclass(frozen=True)
class Pair:
    component: str  # ours: "clip_l", "clip_g", "t5", "mmdit", "vae"
    ours: str  # module name in our model
    reference: str  # module name in the reference model
    stream: str  # a line of the plot
    depth: int  # its position along that line
    output: int = 0  # which element of a tuple output
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or f"{self.component}.{self.ours}"


def pairs_for(clip_l_layers: int, clip_g_layers: int, t5_layers: int, mmdit_depth: int, vae_levels: int) -> list[Pair]:
    """Every paired module, in the order the pipeline computes them."""
    out = []
    for component, stream, layers in (("clip_l", "CLIP-L", clip_l_layers), ("clip_g", "CLIP-G", clip_g_layers)):
        out += [Pair(component, f"text_model.encoder.layers.{i}", f"text_model.encoder.layers.{i}", stream, i)
                for i in range(layers)]
        out.append(Pair(component, "text_model.final_layer_norm", "text_model.final_layer_norm", stream, layers))
    out.append(Pair("clip_g", "text_projection", "text_projection", "CLIP-G", clip_g_layers + 1))
    out += [Pair("t5", f"encoder.block.{i}", f"encoder.block.{i}", "T5", i) for i in range(t5_layers)]
    out.append(Pair("t5", "encoder.final_layer_norm", "encoder.final_layer_norm", "T5", t5_layers))
    out += [
        Pair("mmdit", "x_embedder.proj", "pos_embed.proj", "MMDiT x", -1),
        Pair("mmdit", "t_embedder", "time_text_embed.timestep_embedder", "MMDiT c", -1),
        Pair("mmdit", "y_embedder", "time_text_embed.text_embedder", "MMDiT c", 0),
        Pair("mmdit", "context_embedder", "context_embedder", "MMDiT context", -1),
    ]
    for i in range(mmdit_depth):
        if i < mmdit_depth - 1:  # the last block's context stream is pre-only: it has no output
            out.append(Pair("mmdit", f"joint_blocks.{i}", f"transformer_blocks.{i}", "MMDiT context", i, output=0,
                            label=f"mmdit.joint_blocks.{i} context"))
        out.append(Pair("mmdit", f"joint_blocks.{i}", f"transformer_blocks.{i}", "MMDiT x", i, output=1,
                        label=f"mmdit.joint_blocks.{i} x"))
    out.append(Pair("mmdit", "final_layer", "proj_out", "MMDiT x", mmdit_depth))
    vae_modules = ["decoder.conv_in", "decoder.mid_block"] + [f"decoder.up_blocks.{i}" for i in range(vae_levels)]
    vae_modules += ["decoder.conv_out"]
    out += [Pair("vae", name, name, "VAE decoder", i) for i, name in enumerate(vae_modules)]
    return out


@dataclass
class Agreement:
    max_abs: float
    max_rel: float  # max |Δ| / max |reference|
    cosine: float

    @classmethod
    def of(cls, ours: torch.Tensor, reference: torch.Tensor) -> Agreement:
        ours, reference = ours.double().flatten(), reference.double().flatten()
        delta = (ours - reference).abs().max().item()
        scale = reference.abs().max().item()
        cosine = F.cosine_similarity(ours, reference, dim=0).item() if scale > 0 else 1.0
        return cls(delta, delta / scale if scale > 0 else delta, cosine)


class Recorder:
    """Forward hooks that keep modules' outputs (float32, on the CPU) per call."""

    def __init__(self) -> None:
        self.outputs: dict[tuple[str, str], list] = {}
        self.handles = []

    def attach(self, component: str, model: torch.nn.Module, names: set[str]) -> None:
        modules = dict(model.named_modules())
        for name in names:
            self.handles.append(modules[name].register_forward_hook(self._hook(component, name)))

    def _hook(self, component: str, name: str):
        def keep(module, inputs, output):
            items = output if isinstance(output, (tuple, list)) else (output,)
            kept = tuple(t.detach().float().cpu() if isinstance(t, torch.Tensor) else None for t in items)
            self.outputs.setdefault((component, name), []).append(kept)

        return keep

    def output(self, component: str, name: str, index: int, calls: str) -> torch.Tensor | None:
        """The `index`-th output; `calls` "first" for one call, "all" to stack calls along the batch."""
        recorded = self.outputs.get((component, name))
        if not recorded or recorded[0][index] is None:
            return None
        if calls == "first":
            return recorded[0][index]
        return torch.cat([call[index] for call in recorded])

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
