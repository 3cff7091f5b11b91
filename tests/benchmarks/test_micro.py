"""Micro-benchmarks of the hot modules on small shapes (pytest-benchmark).

    python -m pytest tests/benchmarks --benchmark-only

In a plain test run (and CI) each runs once, untimed, and still checks its output.
"""

import pytest
import torch

from sd3.clip.config import T5Config
from sd3.clip.t5 import T5Block
from sd3.mmdit.attention import attention
from sd3.mmdit.blocks import JointBlock
from sd3.vae.blocks import UpBlock

torch.manual_seed(0)


@pytest.fixture(params=[torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def dtype(request):
    return request.param


def test_mmdit_joint_block(benchmark, dtype):
    """A QK-normed MMDiT-X block of width 256 (4 heads), batch 2, 256 image + 77 context tokens."""
    block = JointBlock(256, 4, 1024, qk_norm=True, pre_only=False, x_block_self_attn=True).to(dtype).eval()
    context, x, c = torch.randn(2, 77, 256, dtype=dtype), torch.randn(2, 256, 256, dtype=dtype), torch.randn(2, 256, dtype=dtype)
    context_out, x_out = benchmark(block, context, x, c)
    assert context_out.shape == context.shape and x_out.shape == x.shape and torch.isfinite(x_out).all()


def test_joint_attention(benchmark, dtype):
    q, k, v = (torch.randn(2, 4, 333, 64, dtype=dtype) for _ in range(3))
    out = benchmark(attention, q, k, v)
    assert out.shape == (2, 333, 256)


def test_vae_decoder_block(benchmark, dtype):
    """A decoder level: 3 ResNet blocks of 128 channels at 32 x 32, then 2x upsampling."""
    block = UpBlock(128, 128, 3, 32, upsample=True).to(dtype).eval()
    x = torch.randn(1, 128, 32, 32, dtype=dtype)
    assert benchmark(block, x).shape == (1, 128, 64, 64)


def test_t5_layer(benchmark, dtype):
    """One T5 block of width 512 (8 heads of 64, d_ff 1024) over 77 tokens."""
    config = T5Config(vocab_size=100, d_model=512, num_layers=1, num_heads=8, d_kv=64, d_ff=1024)
    block = T5Block(config, has_relative_bias=True).to(dtype).eval()
    bias = block.layer[0].SelfAttention.position_bias(77, torch.device("cpu"))
    x = torch.randn(2, 77, 512)
    out = benchmark(block, x, bias)
    assert out.shape == x.shape and out.dtype == torch.float32  # T5's residual stream stays float32
