"""Make low-precision files from real-layout checkpoints: fp8 safetensors (plain or scaled) and GGUF.

    sd3 quantize t5xxl_fp16.safetensors t5xxl_fp8_e4m3fn_scaled.safetensors --to fp8 --scaling scale_weight
    sd3 quantize sd3.5_medium.safetensors sd3.5_medium-Q4_0.gguf --to Q4_0
    sd3 quantize t5xxl_fp16.safetensors t5xxl-Q8_0.gguf --to Q8_0 --component t5

An fp8 file keeps every component of the source (the VAE untouched); a GGUF file holds one
component, the MMDiT or T5, as the files of stable-diffusion.cpp and ComfyUI-GGUF do. The
formats are described in docs/reference.md §8; the writers are sd3/quant/writer.py.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from sd3.errors import SD3Error

FP8_TARGETS = {"fp8": "F8_E4M3", "fp8-e5m2": "F8_E5M2"}
GGUF_TARGETS = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "F16", "BF16")
# The writers' parameters, as this command's flags (error messages name parameters).
FLAGS = {"fp8": "--to", "qtype": "--to", "scaling": "--scaling", "component": "--component", "layout": "--layout"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sd3 quantize", description=__doc__.split("\n")[0])
    p.add_argument("source", help="a .safetensors checkpoint in the official layout (all-in-one or one component)")
    p.add_argument("target", help="the file to write: .safetensors for fp8, .gguf for GGUF")
    p.add_argument("--to", required=True, choices=[*FP8_TARGETS, *GGUF_TARGETS],
                   help="fp8 (float8_e4m3fn), fp8-e5m2, or a GGUF type (the k-quants have no quantiser in gguf)")
    p.add_argument("--scaling", choices=["none", "scale_weight", "weight_scale"], default="none",
                   help="fp8: none (plain), scale_weight (ComfyUI's scaled_fp8 files) or weight_scale (newer files)")
    p.add_argument("--component", choices=["mmdit", "t5"], default="mmdit", help="GGUF: which model to write")
    p.add_argument("--layout", choices=["comfyui", "sd.cpp"], default="comfyui",
                   help="GGUF MMDiT: ComfyUI-GGUF's names (architecture sd3) or stable-diffusion.cpp's (full names)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    source, target = Path(args.source), Path(args.target)
    fp8 = args.to in FP8_TARGETS
    wanted = ".safetensors" if fp8 else ".gguf"
    try:
        if target.suffix.lower() != wanted:
            raise SD3Error(f"--to {args.to} writes a {wanted} file; name the target {target.with_suffix(wanted).name}")
        if source.suffix.lower() != ".safetensors":
            raise SD3Error(f"the source must be a .safetensors checkpoint, not {source.name}")
        from sd3.quant.writer import write_fp8, write_gguf

        if fp8:
            scaling = None if args.scaling == "none" else args.scaling
            written = write_fp8(source, target, fp8=FP8_TARGETS[args.to], scaling=scaling)
        else:
            written = write_gguf(source, target, args.to, component=args.component, layout=args.layout)
    except SD3Error as error:
        message = re.sub(r"`([^`]+)`", lambda m: FLAGS.get(m.group(1), m.group(1)), str(error))
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(f"wrote {written} ({written.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
