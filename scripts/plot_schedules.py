"""Plot sigma per step for the three references and several time shifts (docs/sampling.md).

    python scripts/plot_schedules.py --out docs/images/sigmas.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sd3.sampling import sigmas  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/images/sigmas.png")
    parser.add_argument("--steps", type=int, default=28)
    args = parser.parse_args(argv)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for shift, color in ((1.0, "#1f77b4"), (3.0, "#d62728"), (6.0, "#2ca02c")):
        for schedule, style in (("candle", "-"), ("diffusers", "--")):
            values = sigmas(schedule, args.steps, shift)
            left.plot(range(len(values)), values, style, color=color, marker=".", markersize=3,
                      label=f"{schedule}, shift {shift:g}")
    left.set_xlabel("step")
    left.set_ylabel("σ (noise level)")
    left.set_title(f"{args.steps} steps: σ_i per reference and time shift", fontsize=10)
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    # The references' difference is at the end: diffusers and Stability stop at shift(shift(1/1000)).
    steps = 4
    for schedule, marker in (("candle", "o"), ("diffusers", "s"), ("stability", "x")):
        values = sigmas(schedule, steps, 3.0)
        right.plot(range(len(values)), values, marker=marker, label=f"{schedule}: " + ", ".join(f"{v:.4f}" for v in values))
    right.set_xlabel("step")
    right.set_title(f"{steps} steps, shift 3 (the turbo setting)", fontsize=10)
    right.legend(fontsize=7.5)
    right.grid(alpha=0.3)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
