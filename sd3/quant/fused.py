"""Dequantisation in one pass per weight: the same arithmetic as ggml.py and fp8.py, compiled.

Eager PyTorch runs a dequantisation as several whole-tensor passes (copy the packed bytes apart,
widen to float32, multiply by the scales, round to the compute dtype), each reading and writing the
weight's full size; on a CPU that made a Q8_0 or fp8 step cost 4.6-6.8x a bfloat16 one
(docs/benchmarks.md). `torch.compile` fuses those passes into one loop that reads the stored bytes
and writes the compute dtype, once per layer per step.

The values do not change: every format's arithmetic is done in float32 and rounded to the compute
dtype once, compiled or not, and tests/quant/test_fused.py checks the compiled result equal to the
eager one bit for bit, for every format. The first call of each format compiles (seconds, cached
by torch between runs); where compiling is not possible (no C++ compiler, an unsupported device),
the eager path is used and a warning says why, once.
"""

from __future__ import annotations

import logging

import torch

from sd3.quant.ggml import dequantize_blocks

logger = logging.getLogger(__name__)

RECOMPILE_LIMIT = 64  # formats (12) x compute dtypes (3), with room
_compiled: dict[str, object] = {}
_disabled: list[str] = []  # why compiling was given up, once it failed


def eager(qtype: str, stored: torch.Tensor, shape: tuple[int, ...], scale: torch.Tensor | None,
          dtype: torch.dtype, fp8: bool) -> torch.Tensor:
    """The reference arithmetic: fp8 values (times their scale, in float32) or GGML blocks -> `dtype`."""
    if fp8:
        if scale is None:
            return stored.to(dtype)  # exact: every fp8 value is a float16 and a bfloat16 value
        per_row = scale.reshape(-1, *[1] * (stored.dim() - 1)) if scale.numel() > 1 else scale.reshape(())
        return (stored.float() * per_row).to(dtype)
    return dequantize_blocks(stored, qtype, shape).to(dtype)


def dequantize(qtype: str, stored: torch.Tensor, shape: tuple[int, ...], scale: torch.Tensor | None,
               dtype: torch.dtype, fp8: bool) -> torch.Tensor:
    """`eager`'s values, computed by the compiled kernel for (`qtype`, scaled or not) where it can be."""
    if _disabled or stored.device.type not in ("cpu", "cuda") or torch.compiler.is_compiling():
        return eager(qtype, stored, shape, scale, dtype, fp8)
    key = f"{qtype}:{scale is not None}"
    if key not in _compiled:
        _compiled[key] = torch.compile(eager, dynamic=True, fullgraph=True)
    try:
        # One code object serves every format: allow each (format, dtype) its own compiled variant.
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return _compiled[key](qtype, stored, shape, scale, dtype, fp8)
    except Exception as error:  # a missing compiler or an inductor limit: the eager path is exact too
        _disabled.append(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        logger.warning("compiled dequantisation unavailable (%s); using the eager path, 3-5x slower per step",
                       _disabled[0])
        return eager(qtype, stored, shape, scale, dtype, fp8)
