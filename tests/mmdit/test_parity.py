"""Our MMDiT against diffusers' `SD3Transformer2DModel` on the same tiny random checkpoints.

Reference: diffusers' model, built with an explicit config and loaded strictly through diffusers'
own `convert_sd3_transformer_checkpoint_to_diffusers` (sd3/testing/tiny/mmdit.py). Tolerance: max |Δ|
≤ 1e-5 on outputs of order 1 in float32; the two implementations differ only in summation order
(joint attention over [context, x] vs [x, context], fused vs split qkv), which stays below ~2e-6.
"""

import pytest
import torch

from sd3.mmdit import load_mmdit
from sd3.testing.tiny.mmdit import SD3_LIKE, SD35_LARGE_LIKE, SD35_MEDIUM_LIKE, diffusers_mmdit, mmdit_state_dict

TOLERANCE = 1e-5
ARCHS = {"sd3": SD3_LIKE, "sd3.5-large": SD35_LARGE_LIKE, "sd3.5-medium": SD35_MEDIUM_LIKE}


@pytest.fixture(scope="module", params=list(ARCHS))
def pair(request, tmp_path_factory):
    """(arch, ours loaded from a .safetensors file, diffusers' reference) for one architecture."""
    from safetensors.torch import save_file

    arch = ARCHS[request.param]
    state_dict = mmdit_state_dict(arch, seed=len(request.param))
    path = tmp_path_factory.mktemp("mmdit") / "tiny.safetensors"
    save_file(state_dict, str(path))
    return arch, load_mmdit(path), diffusers_mmdit(arch, state_dict)


def _inputs(arch, batch: int, height: int, width: int, context_len: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, height, width, generator=g)
    t = torch.rand(batch, generator=g) * 1000  # sigma * 1000
    y = torch.randn(batch, arch.adm, generator=g)
    context = torch.randn(batch, context_len, arch.context_dim, generator=g)
    return x, t, y, context


def _compare(ours, ref, x, t, y, context, skip_layers=None):
    got = ours(x, t, y, context, skip_layers=skip_layers)
    want = ref(
        hidden_states=x, encoder_hidden_states=context, pooled_projections=y, timestep=t, skip_layers=skip_layers
    ).sample
    assert got.shape == want.shape == x.shape
    assert 0.3 < want.std() < 3, "reference output should be of order one for the tolerance to mean something"
    delta = (got - want).abs().max().item()
    assert delta <= TOLERANCE, f"max |Δ| = {delta:.2e} > {TOLERANCE:.0e}"


@pytest.mark.parametrize(
    "batch, height, width, context_len",
    [
        (1, 8, 8, 7),  # square, odd context length
        (2, 16, 16, 13),  # the whole position table of an 8x8 table (patch 2)
        (3, 12, 8, 5),  # non-square: taller than wide
        (2, 6, 14, 1),  # non-square: wider than tall, one context token
    ],
)
def test_forward_matches_diffusers(pair, batch, height, width, context_len):
    arch, ours, ref = pair
    _compare(ours, ref, *_inputs(arch, batch, height, width, context_len))


@pytest.mark.parametrize("skip", [[0], [1], [0, 2]])
def test_skip_layers_match_diffusers(pair, skip):
    arch, ours, ref = pair
    skip = [i for i in skip if i < arch.depth]
    inputs = _inputs(arch, 2, 10, 8, 9, seed=3)
    _compare(ours, ref, *inputs, skip_layers=skip)
    # Skipping must change the result, or the comparison above proves nothing about skipping.
    assert (ours(*inputs, skip_layers=skip) - ours(*inputs)).abs().max() > 1e-2


def test_skipping_the_last_block_matches_diffusers(pair):
    arch, ours, ref = pair
    _compare(ours, ref, *_inputs(arch, 2, 8, 8, 4, seed=4), skip_layers=[arch.depth - 1])


def test_batch_items_are_independent(pair):
    arch, ours, _ = pair
    x, t, y, context = _inputs(arch, 3, 8, 8, 6, seed=5)
    whole = ours(x, t, y, context)
    one = ours(x[1:2], t[1:2], y[1:2], context[1:2])
    assert (whole[1:2] - one).abs().max() <= TOLERANCE


def test_scalar_timestep_broadcasts(pair):
    arch, ours, _ = pair
    x, t, y, context = _inputs(arch, 2, 8, 8, 3, seed=6)
    assert torch.equal(ours(x, t[0], y, context), ours(x, t[0].expand(2), y, context))


def test_bfloat16_stays_close_to_float32(tmp_path):
    """bfloat16 weights give the float32 result to bfloat16 accuracy (a drift check, not parity)."""
    arch = SD35_MEDIUM_LIKE
    state_dict = mmdit_state_dict(arch, seed=11)
    full, half = load_mmdit(state_dict), load_mmdit(state_dict, dtype="bf16")
    assert half.dtype == torch.bfloat16
    inputs = _inputs(arch, 2, 8, 8, 5, seed=7)
    got, want = half(*inputs).float(), full(*inputs)
    assert (got - want).abs().max() / want.abs().max() < 0.05
