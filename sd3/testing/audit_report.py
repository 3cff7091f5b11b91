"""The audit's outputs: a table on stdout, a JSON report, and a plot of error by depth."""

from __future__ import annotations

import json
from pathlib import Path


def table(rows: list[dict], threshold: float) -> str:
    """One line per compared module: max |Δ|, max relative error, cosine similarity."""
    width = max(len(r["module"]) for r in rows)
    lines = [f"{'module':<{width}}  {'max |Δ|':>10}  {'max rel':>10}  {'cosine':>12}"]
    first = next((r["module"] for r in rows if r["max_rel"] > threshold), None)
    for r in rows:
        mark = "  <- first above threshold" if r["module"] == first else ""
        lines.append(f"{r['module']:<{width}}  {r['max_abs']:>10.3e}  {r['max_rel']:>10.3e}  {r['cosine']:>12.9f}{mark}")
    lines.append(
        f"first module with max relative error above {threshold:.0e}: {first}" if first
        else f"every module agrees within a max relative error of {threshold:.0e}"
    )
    return "\n".join(lines)


def write_json(path: Path, setup: dict, rows: list[dict], behaviours: list[dict], threshold: float) -> None:
    first = next((r["module"] for r in rows if r["max_rel"] > threshold), None)
    report = {"setup": setup, "threshold": threshold, "first_above_threshold": first, "modules": rows,
              "behaviours": behaviours}
    path.write_text(json.dumps(report, indent=2))


def plot(path: Path, rows: list[dict], title: str, threshold: float) -> None:
    """Max relative error against depth, one line per stream, in three panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = {
        "text encoders (per layer)": ("CLIP-L", "CLIP-G", "T5"),
        "MMDiT (per block; -1 = embedders)": ("MMDiT x", "MMDiT context", "MMDiT c"),
        "sampling (per step) and VAE decoder (per block)": ("sampling", "VAE decoder"),
    }
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    floor = 1e-10  # exact agreement, drawn at the bottom of the log scale
    for ax, (panel, streams) in zip(axes, panels.items()):
        for stream in streams:
            points = sorted((r["depth"], max(r["max_rel"], floor)) for r in rows if r["stream"] == stream)
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=stream)
        ax.axhline(threshold, linestyle="--", color="gray", linewidth=1, label=f"threshold {threshold:.0e}")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("depth")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("max |Δ| / max |reference|   (exact agreement drawn at 1e-10)")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
