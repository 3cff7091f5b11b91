"""ControlNet parity: our ControlNet and MMDiT against diffusers' `SD3ControlNetModel` and
`SD3Transformer2DModel(block_controlnet_hidden_states=...)`, on tiny files in both layouts.

Tolerance: max |Δ| of the velocity ≤ 1e-5 in float32, as the MMDiT's own parity test (the same
blocks in a different summation order).
"""

import pytest
import torch

from sd3.errors import ConfigurationError, ModelLoadingError
from sd3.mmdit import load_mmdit
from sd3.mmdit.controlnet_loading import load_controlnet
from sd3.testing.tiny.controlnet import (
    CONTROL_BASE,
    diffusers_controlnet,
    diffusers_controlnet_model,
    stability_controlnet,
    stability_to_diffusers,
)
from sd3.testing.tiny.mmdit import diffusers_mmdit, mmdit_state_dict

SCALE = 0.7
DEPTH = 2  # ControlNet blocks: one output for every two of the base's four


@pytest.fixture(scope="module")
def base():
    state = mmdit_state_dict(CONTROL_BASE, seed=3, prefix="")
    return load_mmdit(state), diffusers_mmdit(CONTROL_BASE, mmdit_state_dict(CONTROL_BASE, seed=3))


def _inputs(cond_channels=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 8, 12, generator=g)
    t = torch.tensor([870.0, 870.0])
    y = torch.randn(2, CONTROL_BASE.adm, generator=g)
    context = torch.randn(2, 7, CONTROL_BASE.context_dim, generator=g)
    cond = torch.randn(2, cond_channels, 8, 12, generator=g)
    return x, t, y, context, cond


def _ours(base_model, net, inputs, after_last=False):
    x, t, y, context, cond = inputs
    with torch.no_grad():
        residuals = [SCALE * r for r in net(x, t, y, context, cond, base_model)]
        return base_model(x, t, y, context, controls=residuals, controls_after_last_block=after_last)


def _theirs(transformer, controlnet, inputs, joint, after_last=False):
    x, t, y, context, cond = inputs
    if not joint:  # as diffusers' pipeline does for the SD3.5 nets: the base's position embedding
        controlnet.pos_embed = controlnet._get_pos_embed_from_transformer(transformer)
    with torch.no_grad():
        pooled = torch.zeros_like(y) if joint else y  # diffusers' pipeline: force_zeros_for_pooled_projection
        blocks = controlnet(hidden_states=x, controlnet_cond=cond, conditioning_scale=SCALE, timestep=t,
                            encoder_hidden_states=context if joint else None, pooled_projections=pooled,
                            return_dict=False)[0]
        handle = None
        if after_last:  # Stability's rule: the last block gets its residual too
            last = len(transformer.transformer_blocks) - 1
            residual = blocks[last * len(blocks) // len(transformer.transformer_blocks)]
            handle = transformer.transformer_blocks[last].register_forward_hook(
                lambda module, args, out: (out[0], out[1] + residual))
        v = transformer(hidden_states=x, timestep=t, encoder_hidden_states=context, pooled_projections=y,
                        block_controlnet_hidden_states=blocks, return_dict=False)[0]
        if handle:
            handle.remove()
    return v


@pytest.mark.parametrize("after_last", [False, True], ids=["diffusers-injection", "stability-injection"])
def test_stability_8b_layout(base, after_last):
    ours_base, transformer = base
    state = stability_controlnet(CONTROL_BASE, DEPTH, seed=5)
    net = load_controlnet(state, ours_base.config)
    assert net.config.kind == "stability-8b" and net.control_image_type == "canny"
    reference = diffusers_controlnet_model(CONTROL_BASE, stability_to_diffusers(state), joint=False, depth=DEPTH)
    inputs = _inputs()
    delta = (_ours(ours_base, net, inputs, after_last) - _theirs(transformer, reference, inputs, False, after_last)).abs().max()
    assert delta <= 1e-5


def test_stability_layout_as_diffusers_converted_it(base):
    """The same net in diffusers' names loads to the same model."""
    ours_base, _ = base
    state = stability_controlnet(CONTROL_BASE, DEPTH, seed=5)
    direct = load_controlnet(state, ours_base.config)
    converted = load_controlnet(stability_to_diffusers(state), ours_base.config)
    want = {name: value for name, value in direct.state_dict().items() if name != "control_type"}
    got = converted.state_dict()
    assert sorted(got) == sorted(want) and all(torch.equal(got[name], want[name]) for name in want)
    assert converted.control_image_type is None and "control_type" not in dict(converted.named_buffers())


@pytest.mark.parametrize("extra, qk_norm", [(0, False), (1, False), (0, True)], ids=["instantx", "inpainting", "qk-norm"])
def test_diffusers_joint_layout(base, extra, qk_norm):
    ours_base, transformer = base
    state = diffusers_controlnet(CONTROL_BASE, DEPTH, extra_channels=extra, qk_norm=qk_norm, seed=7)
    net = load_controlnet(state, ours_base.config)
    assert net.config.kind == "joint" and net.config.cond_channels == 16 + extra and net.control_image_type is None
    reference = diffusers_controlnet_model(CONTROL_BASE, state, joint=True, depth=DEPTH, extra_channels=extra,
                                           qk_norm=qk_norm)
    inputs = _inputs(16 + extra)
    assert (_ours(ours_base, net, inputs) - _theirs(transformer, reference, inputs, True)).abs().max() <= 1e-5


def test_stability_2b_path(base):
    """Stability's 2B path (its own embedder without positions, the base's embedded pooled vector,
    blocks not chained) against diffusers' modules wired that way; diffusers has no such model."""
    ours_base, transformer = base
    state = stability_controlnet(CONTROL_BASE, DEPTH, two_b=True, control_type=2, seed=9)
    net = load_controlnet(state, ours_base.config)
    assert net.config.kind == "stability-2b" and not net.config.chained and net.control_image_type == "depth"
    converted = stability_to_diffusers(state)
    reference = diffusers_controlnet_model(CONTROL_BASE, {k: v for k, v in converted.items() if not k.startswith("pos_embed.")},
                                           joint=False, depth=DEPTH, pooled_dim=CONTROL_BASE.hidden)
    x, t, y, context, cond = inputs = _inputs()
    with torch.no_grad():
        embed = torch.nn.Conv2d(16, CONTROL_BASE.hidden, 2, stride=2)
        embed.weight.copy_(converted["pos_embed.proj.weight"]), embed.bias.copy_(converted["pos_embed.proj.bias"])
        tokens = embed(x).flatten(2).transpose(1, 2)  # no position embedding on this path
        text = transformer.time_text_embed.text_embedder(y)  # the base's embedded pooled vector
        temb = reference.time_text_embed.timestep_embedder(reference.time_text_embed.time_proj(t)) + \
            reference.time_text_embed.text_embedder(text)
        tokens = tokens + reference.pos_embed_input(cond)
        want = [SCALE * project(block(tokens, temb)) for block, project in
                zip(reference.transformer_blocks, reference.controlnet_blocks)]
        got = [SCALE * r for r in net(x, t, y, context, cond, ours_base)]
    assert max((a - b).abs().max() for a, b in zip(got, want)) <= 1e-5
    assert _ours(ours_base, net, inputs).abs().max() > 0


def test_a_controlnet_for_another_model_is_refused(base, tmp_path):
    ours_base, _ = base
    with pytest.raises(ConfigurationError, match="is 64 wide .* the MMDiT is 128 wide"):
        load_controlnet(stability_controlnet(CONTROL_BASE.__class__(depth=2, heads=1), 2), ours_base.config)
    flux = {"controlnet_x_embedder.weight": torch.ones(2, 2), "controlnet_blocks.0.weight": torch.ones(2, 2)}
    with pytest.raises(ModelLoadingError, match="is a Flux ControlNet"):
        load_controlnet(flux, ours_base.config)
    sdxl = {"controlnet_down_blocks.0.weight": torch.ones(2, 2), "controlnet_mid_block.weight": torch.ones(2)}
    with pytest.raises(ModelLoadingError, match="an SD 1.x/SDXL ControlNet"):
        load_controlnet(sdxl, ours_base.config)
    with pytest.raises(ModelLoadingError, match="is a base model checkpoint"):
        load_controlnet(mmdit_state_dict(CONTROL_BASE), ours_base.config)
    with pytest.raises(ModelLoadingError, match="not an SD3 ControlNet: it has no 'controlnet_blocks.'"):
        load_controlnet({"foo.weight": torch.ones(2)}, ours_base.config)


def test_stabilitys_sd35_large_nets_at_full_size_on_meta():
    """The real SD3.5-large ControlNet layout (19 blocks, width 2432, 2048-wide text embedder) against
    SD3.5-large's MMDiT: the 8B kind, and the same names and shapes as diffusers' model of it."""
    from diffusers import SD3ControlNetModel

    from sd3.mmdit import Config
    from sd3.testing.tiny.mmdit import TinyMMDiT
    from sd3.testing.tiny.random import MetaTensors

    large = TinyMMDiT(depth=38, heads=38, adm=2048, context_dim=4096, pos_embed_max_size=192)
    state = stability_controlnet(large, 19, tensors=MetaTensors())
    net = load_controlnet(state, Config.sd3_5_large(), device="meta")
    assert (net.config.kind, net.config.depth, net.config.hidden_size, net.config.num_heads) == ("stability-8b", 19, 2432, 38)
    with torch.device("meta"):
        theirs = SD3ControlNetModel(num_layers=19, attention_head_dim=64, num_attention_heads=38, joint_attention_dim=None,
                                    pooled_projection_dim=2048, pos_embed_type=None, use_pos_embed=False,
                                    force_zeros_for_pooled_projection=False)
    want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in stability_to_diffusers(state).items()} == want
