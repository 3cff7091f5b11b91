"""GGML block quantisation, dequantised in torch: Q8_0, Q5_0, Q5_1, Q4_0, Q4_1 and Q2_K to Q6_K.

A GGUF tensor of logical shape (..., k) is stored row by row as blocks: each block packs `block`
consecutive values of a row into `size` bytes (one or two float16 factors, then the packed
integers), so a row takes k / block * size bytes. These functions turn a (n, size) uint8 tensor of
blocks into (n, block) float32 values; `dequantize_blocks` reshapes to the logical shape.

The layouts are ggml's (ggerganov/ggml `src/ggml-common.h`, the `block_q*` structs) and are checked
value for value against the `gguf` package's numpy reference, `gguf.quants.dequantize`, in
tests/quant/test_ggml.py. The legacy types (Q4_0 ... Q8_0) have 32-value blocks and one scale; the
k-quants have 256-value super-blocks split into sub-blocks of 16 or 32 values, each with its own
6- or 4-bit scale (and min) relative to the super-block's float16 `d` (and `dmin`).

Legend: n blocks; values come out in a row's order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

QK_K = 256  # values per k-quant super-block


def _f16(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The little-endian float16 stored at byte `at` of every block, as float32 (n, 1).

    Converted with integer operations, exactly for every float16 (subnormals, signed zeros, inf and
    NaN included): a compiled dequantiser (fused.py) then has no float16 arithmetic, which keeps
    inductor's CPU code vectorised."""
    bits = blocks[:, at : at + 1].to(torch.int32) | (blocks[:, at + 1 : at + 2].to(torch.int32) << 8)
    sign, exponent, mantissa = (bits >> 15) & 1, (bits >> 10) & 0x1F, bits & 0x3FF
    normal = ((sign << 31) | ((exponent + 112) << 23) | (mantissa << 13)).view(torch.float32)  # rebias 15 -> 127
    special = ((sign << 31) | (0xFF << 23) | (mantissa << 13)).view(torch.float32)  # inf and NaN
    subnormal = mantissa.float() * 2.0**-24 * (1 - 2 * sign).float()  # exact: at most 10 bits
    return torch.where(exponent == 0, subnormal, torch.where(exponent == 0x1F, special, normal))


def _bits(packed: torch.Tensor, shifts: list[int], mask: int) -> torch.Tensor:
    """(n, g, m) bytes -> (n, g, len(shifts), m): each byte shifted right by each shift, masked."""
    shift = torch.tensor(shifts, dtype=torch.uint8, device=packed.device).view(1, 1, -1, 1)
    return (packed.unsqueeze(2) >> shift) & mask


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    # d (f16) | 32 int8: x = d * q
    return _f16(b, 0) * b[:, 2:34].to(torch.int8).float()  # uint8 -> int8 wraps, as a reinterpretation


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """16 bytes -> 32 values: the low nibbles are values 0..15, the high nibbles 16..31."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=1)


def _fifth_bits(qh: torch.Tensor) -> torch.Tensor:
    """A little-endian uint32 (n, 4 bytes) -> its 32 bits (n, 32), bit j for value j."""
    shift = torch.arange(8, dtype=torch.uint8, device=qh.device)
    return ((qh.unsqueeze(-1) >> shift) & 1).reshape(-1, 32)  # (n, 4, 8): byte j // 8, bit j % 8


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    # d (f16) | 16 bytes of nibbles: x = d * (q - 8)
    return _f16(b, 0) * (_nibbles(b[:, 2:18]).float() - 8)


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    # d, m (f16) | 16 bytes of nibbles: x = d * q + m
    return _f16(b, 0) * _nibbles(b[:, 4:20]).float() + _f16(b, 2)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    # d (f16) | qh (uint32, the fifth bits) | 16 bytes of nibbles: x = d * (q - 16)
    q = _nibbles(b[:, 6:22]) | (_fifth_bits(b[:, 2:6]) << 4)
    return _f16(b, 0) * (q.float() - 16)


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    # d, m (f16) | qh (uint32) | 16 bytes of nibbles: x = d * q + m
    q = _nibbles(b[:, 8:24]) | (_fifth_bits(b[:, 4:8]) << 4)
    return _f16(b, 0) * q.float() + _f16(b, 2)


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    # scales[16] (low nibble scale, high nibble min) | qs[64] (2 bits) | d | dmin; 16 sub-blocks of 16
    n = b.shape[0]
    scales = b[:, :16]
    q = _bits(b[:, 16:80].view(n, 2, 32), [0, 2, 4, 6], 3).reshape(n, 16, 16).float()
    scale = (_f16(b, 80) * (scales & 0x0F).float()).unsqueeze(-1)  # (n, 16, 1)
    low = (_f16(b, 82) * (scales >> 4).float()).unsqueeze(-1)
    return (scale * q - low).reshape(n, QK_K)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    # hmask[32] (third bits) | qs[64] (2 bits) | scales[12] (16 six-bit) | d; 16 sub-blocks of 16
    n = b.shape[0]
    packed = b[:, 96:108]
    low4 = _bits(packed[:, :8].unsqueeze(1), [0, 4], 0x0F).reshape(n, 16)  # scale j: byte j % 8, nibble j // 8
    high2 = _bits(packed[:, 8:12].unsqueeze(1), [0, 2, 4, 6], 3).reshape(n, 16)  # byte 8 + j % 4, pair j // 4
    scale = (low4 | (high2 << 4)).float() - 32  # six bits, offset by 32
    low2 = _bits(b[:, 32:96].view(n, 2, 32), [0, 2, 4, 6], 3).reshape(n, 16, 16)
    high = _bits(b[:, :32].unsqueeze(1), list(range(8)), 1).reshape(n, 16, 16)
    q = low2.float() - 4 * (1 - high.float())  # a set hmask bit means no offset
    return ((_f16(b, 108) * scale).unsqueeze(-1) * q).reshape(n, QK_K)


def _k_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 bytes -> 8 six-bit scales and 8 six-bit mins (Q4_K, Q5_K), each (n, 8).

    Bytes 0-3 hold scales 0-3 in their low six bits, bytes 4-7 mins 0-3; scales and mins 4-7 take
    their low four bits from the nibbles of bytes 8-11 and their top two from the spare bits above.
    """
    first, second, third = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scale = torch.cat([first & 0x3F, (third & 0x0F) | ((first >> 2) & 0x30)], dim=1)
    low = torch.cat([second & 0x3F, (third >> 4) | ((second >> 2) & 0x30)], dim=1)
    return scale.float(), low.float()


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    # d | dmin | scales[12] | qs[128] (nibbles); 8 sub-blocks of 32
    n = b.shape[0]
    scale, low = _k_scales(b[:, 4:16])
    q = _bits(b[:, 16:144].view(n, 4, 32), [0, 4], 0x0F).reshape(n, 8, 32).float()
    return ((_f16(b, 0) * scale).unsqueeze(-1) * q - (_f16(b, 2) * low).unsqueeze(-1)).reshape(n, QK_K)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    # d | dmin | scales[12] | qh[32] (fifth bits) | qs[128] (nibbles); 8 sub-blocks of 32
    n = b.shape[0]
    scale, low = _k_scales(b[:, 4:16])
    nibbles = _bits(b[:, 48:176].view(n, 4, 32), [0, 4], 0x0F).reshape(n, 8, 32)
    fifth = _bits(b[:, 16:48].unsqueeze(1), list(range(8)), 1).reshape(n, 8, 32)
    q = (nibbles | (fifth << 4)).float()
    return ((_f16(b, 0) * scale).unsqueeze(-1) * q - (_f16(b, 2) * low).unsqueeze(-1)).reshape(n, QK_K)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    # ql[128] (low nibbles) | qh[64] (high pairs) | scales[16] (int8) | d; 16 sub-blocks of 16
    n = b.shape[0]
    low4 = _bits(b[:, :128].view(n, 2, 64), [0, 4], 0x0F).reshape(n, 8, 32)
    high2 = _bits(b[:, 128:192].view(n, 2, 32), [0, 2, 4, 6], 3).reshape(n, 8, 32)
    q = ((low4 | (high2 << 4)).float() - 32).reshape(n, 16, 16)
    scale = _f16(b, 208) * b[:, 192:208].to(torch.int8).float()  # (n, 16)
    return (scale.unsqueeze(-1) * q).reshape(n, QK_K)


# name -> (values per block, bytes per block, (n, bytes) uint8 -> (n, values) float32)
BLOCK_TYPES: dict[str, tuple[int, int, Callable[[torch.Tensor], torch.Tensor]]] = {
    "Q8_0": (32, 34, _q8_0),
    "Q5_0": (32, 22, _q5_0),
    "Q5_1": (32, 24, _q5_1),
    "Q4_0": (32, 18, _q4_0),
    "Q4_1": (32, 20, _q4_1),
    "Q2_K": (QK_K, 84, _q2_k),
    "Q3_K": (QK_K, 110, _q3_k),
    "Q4_K": (QK_K, 144, _q4_k),
    "Q5_K": (QK_K, 176, _q5_k),
    "Q6_K": (QK_K, 210, _q6_k),
}


def byte_shape(shape: tuple[int, ...], qtype: str) -> tuple[int, ...]:
    """The (..., bytes per row) uint8 shape that holds a `qtype` tensor of logical `shape`."""
    block, size, _ = BLOCK_TYPES[qtype]
    return (*shape[:-1], shape[-1] // block * size)


def dequantize_blocks(raw: torch.Tensor, qtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """uint8 blocks (any shape holding whole blocks) -> float32 values of the logical `shape`."""
    block, size, dequantize = BLOCK_TYPES[qtype]
    return dequantize(raw.reshape(-1, size)).reshape(shape)
