"""The compiled dequantisation (sd3/quant/fused.py) against the eager arithmetic, bit for bit, for
every format; the eager one is itself checked against `gguf.quants.dequantize` (test_ggml.py)."""

import pytest
import torch

from sd3.quant import fused
from sd3.quant.ggml import BLOCK_TYPES


def _blocks(qtype: str, rows: int = 6, blocks_per_row: int = 3) -> tuple[torch.Tensor, tuple[int, int]]:
    """Random blocks with finite float16 factors (random bytes there could be inf or NaN)."""
    block, size, _ = BLOCK_TYPES[qtype]
    raw = torch.randint(0, 256, (rows * blocks_per_row, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    signs = torch.where(torch.rand(rows * blocks_per_row, 4, generator=torch.Generator().manual_seed(2)) < 0.5, -1.0, 1.0)
    magnitudes = torch.tensor([0.05, 3e-6, 0.02, 7e-5]).repeat(rows * blocks_per_row, 1)  # normal and subnormal float16
    factors = (signs * magnitudes).half().view(torch.uint8)  # 4 float16 = 8 bytes
    for at in {"Q8_0": (0,), "Q5_0": (0,), "Q4_0": (0,), "Q5_1": (0, 2), "Q4_1": (0, 2), "Q2_K": (80, 82),
               "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}[qtype]:
        raw[:, at : at + 2] = factors[:, :2]
    return raw.reshape(rows, -1), (rows, blocks_per_row * block)


@pytest.mark.parametrize("qtype", sorted(BLOCK_TYPES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_ggml_blocks_compiled_equal_eager(qtype, dtype):
    for rows in (6, 10, 14):  # one size, then others: the static kernel, then the one with a symbolic block count
        raw, shape = _blocks(qtype, rows=rows)
        want = fused.eager(qtype, raw, shape, None, dtype, False)
        assert torch.isfinite(want).all()
        assert torch.equal(fused.dequantize(qtype, raw, shape, None, dtype, False), want)
    assert not fused._disabled, fused._disabled


@pytest.mark.parametrize("scale", [None, "tensor", "rows"])
def test_fp8_compiled_equal_eager(scale):
    stored = (torch.randn(8, 64, generator=torch.Generator().manual_seed(1)) * 3).to(torch.float8_e4m3fn)
    factor = {None: None, "tensor": torch.tensor(0.37), "rows": torch.rand(8) + 0.5}[scale]
    want = fused.eager("F8_E4M3", stored, (8, 64), factor, torch.bfloat16, True)
    assert torch.equal(fused.dequantize("F8_E4M3", stored, (8, 64), factor, torch.bfloat16, True), want)
    assert not fused._disabled, fused._disabled


def test_without_a_compiler_the_eager_path_runs(monkeypatch, caplog):
    raw, shape = _blocks("Q8_0")

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(fused, "_compiled", broken)
    monkeypatch.setattr(fused, "_disabled", [])
    out = fused.dequantize("Q8_0", raw, shape, None, torch.bfloat16, False)
    assert torch.equal(out, fused.eager("Q8_0", raw, shape, None, torch.bfloat16, False))
    assert "compiled dequantisation unavailable (RuntimeError: no C++ compiler found)" in caplog.text
