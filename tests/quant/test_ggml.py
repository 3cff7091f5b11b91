"""Our torch dequantisation of every supported GGML block type against the gguf package's numpy one."""

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from sd3.quant.ggml import BLOCK_TYPES, byte_shape, dequantize_blocks  # noqa: E402

# Byte offsets of each block's float16 factors (d, and m or dmin), from ggml's block_q* structs:
# random bytes there could be inf or NaN, so the test writes finite factors in those places.
F16_AT = {"Q8_0": (0,), "Q5_0": (0,), "Q5_1": (0, 2), "Q4_0": (0,), "Q4_1": (0, 2), "Q2_K": (80, 82),
          "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def random_blocks(qtype: str, rows: int, blocks_per_row: int, seed: int = 0, factor: float = 1.0) -> np.ndarray:
    """(rows, bytes per row) uint8: random packed integers and scales, finite random float16 factors."""
    _, size, _ = BLOCK_TYPES[qtype]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(rows * blocks_per_row, size), dtype=np.uint8)
    for at in F16_AT[qtype]:
        blocks[:, at : at + 2] = (factor * rng.uniform(-1, 1, size=(len(blocks), 1))).astype(np.float16).view(np.uint8)
    return blocks.reshape(rows, blocks_per_row * size)


def test_every_type_gguf_lists_has_our_block_size():
    for qtype, (block, size, _) in BLOCK_TYPES.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]] == (block, size), qtype


@pytest.mark.parametrize("qtype", list(BLOCK_TYPES))
def test_random_blocks_match_gguf_value_for_value(qtype):
    block = BLOCK_TYPES[qtype][0]
    raw = random_blocks(qtype, rows=6, blocks_per_row=3)
    ours = dequantize_blocks(torch.from_numpy(raw), qtype, (6, 3 * block))
    reference = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
    assert np.abs(reference).max() > 1  # the values exercise the scales, not only zeros
    assert np.array_equal(ours.numpy(), reference)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1"])
def test_quantised_weights_round_trip_through_gguf(qtype):
    """A weight quantised by gguf's own quantiser, dequantised by both sides: identical, and near the original."""
    weight = np.random.default_rng(1).standard_normal((8, 128)).astype(np.float32)
    raw = gguf.quants.quantize(weight, gguf.GGMLQuantizationType[qtype])
    assert raw.shape == byte_shape((8, 128), qtype)
    ours = dequantize_blocks(torch.from_numpy(raw), qtype, (8, 128)).numpy()
    assert np.array_equal(ours, gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]))
    bits = {"Q8_0": 8, "Q5_0": 5, "Q5_1": 5, "Q4_0": 4, "Q4_1": 4}[qtype]
    assert np.abs(ours - weight).max() < 4 * np.abs(weight).max() / 2**bits


def test_float16_fields_convert_exactly_for_every_bit_pattern():
    """ggml's float16 scales, converted with integer operations: all 65,536 patterns as torch converts them."""
    from sd3.quant.ggml import _f16

    patterns = torch.arange(65536, dtype=torch.int32)
    blocks = torch.stack([patterns & 0xFF, patterns >> 8], dim=1).to(torch.uint8)  # little-endian bytes
    got = _f16(blocks, 0).flatten()
    want = blocks.view(torch.float16).float().flatten()
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32))  # signed zeros included
