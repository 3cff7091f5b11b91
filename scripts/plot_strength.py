"""Plot which sigmas image to image runs at each strength (docs/sampling.md).

    python scripts/plot_strength.py --out docs/images/strength.png

The diffusers schedule at shift 3; each row is one strength. Filled points are the sigmas that run,
hollow ones the steps skipped; the first filled point is where the image is noised to
(x = (1 - sigma) x0 + sigma noise). Rows for diffusers' start rule (int(N - N * strength)) and
Stability's (int(N * (1 - strength))), which differ where float rounding lands on an integer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sd3.sampling import sigmas  # noqa: E402
from sd3.sampling.img2img import start_index  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/images/strength.png")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    schedule = sigmas("diffusers", args.steps, 3.0)[:-1]
    strengths = (1.0, 0.8, 0.6, 0.3)
    fig, ax = plt.subplots(figsize=(11, 4.2))
    row = 0
    labels = []
    for strength in strengths:
        for rule, color in (("diffusers", "#d62728"), ("stability", "#1f77b4")):
            first = start_index(args.steps, strength, rule)
            ax.scatter(range(first, args.steps), [row] * (args.steps - first), s=60, color=color, zorder=3)
            ax.scatter(range(first), [row] * first, s=60, facecolors="none", edgecolors="#999999", zorder=3)
            labels.append(f"strength {strength:g}, {rule}: {args.steps - first} steps from σ={schedule[first]:.3f}")
            row += 1
    for i, sigma in enumerate(schedule):
        ax.annotate(f"{sigma:.2f}", (i, row - 0.4), ha="center", fontsize=8, color="#555555")
    ax.set_yticks(range(row), labels, fontsize=8)
    ax.set_xticks(range(args.steps))
    ax.set_xlabel(f"step of the {args.steps}-step schedule (its σ in grey under each column)")
    ax.set_ylim(-0.7, row + 0.1)
    ax.invert_yaxis()
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("Image to image: the steps each strength runs (filled) and skips (hollow)")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
