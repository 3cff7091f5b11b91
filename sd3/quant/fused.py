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

from sd3.quant.ggml import BLOCK_TYPES

logger = logging.getLogger(__name__)

RECOMPILE_LIMIT = 128  # formats (12) x compute dtypes (3) x static and dynamic variants, with room
# torch before 2.6 calls the limit `cache_size_limit`.
_LIMIT = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
_compiled = None
_disabled: list[str] = []  # why compiling was given up, once it failed


def _values(qtype: str, stored: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype, fp8: bool) -> torch.Tensor:
    """fp8 values (times their scale, in float32) in their own shape, or GGML blocks (n, bytes per
    block) as (n, values per block), in `dtype`. No shape argument, and blocks already cut apart: a
    compiled version then sees one varying size, n, and keeps its per-block loops static."""
    if fp8:
        if scale is None:
            return stored.to(dtype)  # exact: every fp8 value is a float16 and a bfloat16 value
        per_row = scale.reshape(-1, *[1] * (stored.dim() - 1)) if scale.numel() > 1 else scale.reshape(())
        return (stored.float() * per_row).to(dtype)
    return BLOCK_TYPES[qtype][2](stored).to(dtype)


def _blocks(qtype: str, stored: torch.Tensor, fp8: bool) -> torch.Tensor:
    return stored if fp8 else stored.reshape(-1, BLOCK_TYPES[qtype][1])


def eager(qtype: str, stored: torch.Tensor, shape: tuple[int, ...], scale: torch.Tensor | None,
          dtype: torch.dtype, fp8: bool) -> torch.Tensor:
    """The reference arithmetic (ggml.py's and fp8's), uncompiled: a `dtype` tensor of `shape`."""
    return _values(qtype, _blocks(qtype, stored, fp8), scale, dtype, fp8).reshape(shape)


def dequantize(qtype: str, stored: torch.Tensor, shape: tuple[int, ...], scale: torch.Tensor | None,
               dtype: torch.dtype, fp8: bool) -> torch.Tensor:
    """`eager`'s values, computed by the compiled kernel for (`qtype`, scaled or not) where it can be."""
    # A plain fp8 cast is one pass already, and eager's is faster on the CPU (15 against 18 ms for a
    # 1536 x 6144 weight); every other format gains 2-10x compiled (docs/benchmarks.md).
    if _disabled or (fp8 and scale is None) or stored.device.type not in ("cpu", "cuda") or torch.compiler.is_compiling():
        return eager(qtype, stored, shape, scale, dtype, fp8)
    global _compiled
    if _compiled is None:
        # Automatic dynamic shapes: static for the first size, then the block count n symbolic.
        _compiled = torch.compile(_values, fullgraph=True)
    try:
        # One code object serves every format: allow each (format, dtype) its own compiled variant.
        with torch._dynamo.config.patch(**{_LIMIT: RECOMPILE_LIMIT}):
            # detach: a plain tensor whether the caller holds a Parameter or not (one variant, no autograd)
            return _compiled(qtype, _blocks(qtype, stored.detach(), fp8), scale, dtype, fp8).reshape(shape)
    except Exception as error:  # a missing compiler or an inductor limit: the eager path is exact too
        _disabled.append(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        logger.warning("compiled dequantisation unavailable (%s); using the eager path (a step 2-7x slower on a CPU)",
                       _disabled[0])
        return eager(qtype, stored, shape, scale, dtype, fp8)
