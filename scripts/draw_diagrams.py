"""Draw the block diagrams of docs/architecture.md: the MMDiT joint block and the MMDiT-X block.

    python scripts/draw_diagrams.py --out-dir docs/images

The boxes carry the module names of mmdit/blocks.py and mmdit/attention.py (which are the
checkpoint's key names), so the picture and the code can be read side by side.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

COLORS = {"norm": "#dbe9f6", "linear": "#fde2c8", "attention": "#f6d5e5", "op": "#eeeeee", "cond": "#d9f2d9"}


class Canvas:
    def __init__(self, width: float, height: float, title: str) -> None:
        self.fig, self.ax = plt.subplots(figsize=(width, height))
        self.ax.set_xlim(0, width * 10)
        self.ax.set_ylim(0, height * 10)
        self.ax.axis("off")
        self.ax.set_title(title, fontsize=12)

    def box(self, x: float, y: float, text: str, kind: str, w: float = 22, h: float = 5) -> tuple[float, float]:
        """A box centred on (x, y); returns its centre."""
        self.ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.4",
                                         facecolor=COLORS[kind], edgecolor="#555555", linewidth=0.8))
        self.ax.text(x, y, text, ha="center", va="center", fontsize=7.5)
        return x, y

    def arrow(self, start, end, text: str = "", color: str = "#333333") -> None:
        self.ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", color=color, linewidth=0.9))
        if text:
            self.ax.text((start[0] + end[0]) / 2 + 1, (start[1] + end[1]) / 2, text, fontsize=6.5, color=color)

    def save(self, path: Path) -> None:
        self.fig.tight_layout()
        self.fig.savefig(path, dpi=130)
        plt.close(self.fig)


def stream(c: Canvas, x: float, name: str, top: float, mmditx: bool = False) -> dict:
    """One stream of a joint block, drawn top to bottom; returns the anchor points it exposes."""
    c.box(x, top, f"{name} (b, n, d)", "op", w=24)
    ln1 = c.box(x, top - 9, "LayerNorm (no affine)", "norm")
    c.arrow((x, top - 2.7), (x, top - 6.3))
    mod1 = c.box(x, top - 18, "modulate: ·(1+scale_msa)+shift_msa", "cond", w=30)
    c.arrow((x, top - 11.7), (x, top - 15.3))
    qkv = c.box(x, top - 27, "attn.qkv -> q, k, v\nattn.ln_q / attn.ln_k (SD3.5)", "linear", w=28, h=6)
    c.arrow((x, top - 20.7), (x, top - 23.7))
    proj = c.box(x, top - 47, "attn.proj", "linear")
    gate1 = c.box(x, top - 55, "· gate_msa, + residual", "op")
    c.arrow((x, top - 49.7), (x, top - 52.3))
    c.arrow((x - 13, top), (x - 13, top - 55), color="#888888")
    c.ax.plot([x - 13, x - 11], [top - 55, top - 55], color="#888888", linewidth=0.9)
    last = (x, top - 57.7)
    if mmditx:
        side = x + 34
        mod2 = c.box(side, top - 18, "modulate: ·(1+scale_msa2)+shift_msa2", "cond", w=32)
        c.arrow((x + 11, top - 9), (side - 10, top - 16), text="same LayerNorm output")
        att2 = c.box(side, top - 33, "attn2: qkv, ln_q/ln_k,\nself-attention over x only, proj", "attention", w=32, h=7)
        c.arrow((side, top - 20.7), (side, top - 29.3))
        gate2 = c.box(side, top - 63, "· gate_msa2, + residual", "op", w=24)
        c.arrow((side, top - 36.7), (side, top - 60.3))
        c.arrow(last, (x, top - 60.3))
        c.box(x, top - 63, "(x after attn)", "op", w=18)
        c.arrow((x + 9.4, top - 63), (side - 12.4, top - 63))
        last = (side, top - 65.7)
        y = top - 72
        ln2 = c.box(x, y, "LayerNorm (no affine)", "norm")
        c.arrow(last, (x + 6, y + 2.7))
    else:
        y = top - 64
        ln2 = c.box(x, y, "LayerNorm (no affine)", "norm")
        c.arrow(last, (x, y + 2.7))
    c.box(x, y - 9, "modulate: ·(1+scale_mlp)+shift_mlp", "cond", w=30)
    c.arrow((x, y - 2.7), (x, y - 6.3))
    c.box(x, y - 18, "mlp.fc1 -> GELU(tanh) -> mlp.fc2", "linear", w=30)
    c.arrow((x, y - 11.7), (x, y - 15.3))
    c.box(x, y - 27, "· gate_mlp, + residual", "op")
    c.arrow((x, y - 20.7), (x, y - 24.3))
    c.box(x, y - 36, f"{name} out", "op", w=18)
    c.arrow((x, y - 29.7), (x, y - 33.3))
    return {"qkv": qkv, "proj": proj}


def joint_block(path: Path, mmditx: bool) -> None:
    title = ("MMDiT-X block (SD3.5-medium, blocks 0-12): x stream with a second, image-only attention"
             if mmditx else "MMDiT joint block (arXiv 2403.03206, Fig. 2b): two streams, one attention")
    c = Canvas(13 if mmditx else 10, 13.5 if mmditx else 12.5, title)
    top = 118 if mmditx else 108
    chunks = "6 chunks; the x stream 9 (+ shift/scale/gate_msa2)" if mmditx else "6 chunks; the last block's context 2"
    c.box(44 if not mmditx else 60, top + 10, "c = t_embedder(σ·1000) + y_embedder(pooled text)   (b, d)\n"
          f"per stream: adaLN_modulation.1(SiLU(c)) -> shift, scale, gate per sub-layer ({chunks})", "cond", w=76, h=7)
    context = stream(c, 22, "context", top)
    x = stream(c, 66 if not mmditx else 62, "x", top, mmditx=mmditx)
    mid = (context["qkv"][0] + x["qkv"][0]) / 2
    attention = c.box(mid, top - 37, "joint attention: softmax(q kᵀ/√64) v\nover [context; x] tokens (SDPA)", "attention", w=40, h=6)
    for stream_ in (context, x):
        c.arrow((stream_["qkv"][0], top - 30.3), (attention[0] + (-8 if stream_ is context else 8), top - 34))
        c.arrow((attention[0] + (-8 if stream_ is context else 8), top - 40), (stream_["proj"][0], top - 44.3))
    c.ax.text(mid, top - 43.5, "split rows back per stream", ha="center", fontsize=6.5)
    c.save(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Draw the MMDiT block diagrams.")
    parser.add_argument("--out-dir", default="docs/images")
    out = Path(parser.parse_args(argv).out_dir)
    out.mkdir(parents=True, exist_ok=True)
    joint_block(out / "mmdit_block.png", mmditx=False)
    joint_block(out / "mmditx_block.png", mmditx=True)
    print(f"wrote {out / 'mmdit_block.png'} and {out / 'mmditx_block.png'}")


if __name__ == "__main__":
    main()
