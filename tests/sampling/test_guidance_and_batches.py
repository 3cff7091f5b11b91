"""CFG batching, the unconditional pass at cfg 1, SLG's window, and batches vs single images."""

import pytest
import torch

from sd3.mmdit import load_mmdit
from sd3.sampling import Conditioning, GuidedVelocity, SkipLayerGuidanceConfig, StableDiffusion3


@pytest.fixture(scope="module")
def model(tiny):
    return load_mmdit(tiny.checkpoint)


@pytest.fixture(scope="module")
def cond(tiny):
    g = torch.Generator().manual_seed(0)
    context, y = (2, 9, 384), (2, 320)  # the tiny MMDiT's context and pooled widths
    return Conditioning(*(torch.randn(*shape, generator=g) for shape in (context, y, context, y)))


class Counting:
    """Wraps the MMDiT and records the batch size of every call."""

    def __init__(self, model):
        self.model, self.batches, self.config = model, [], model.config

    def __call__(self, x, *args, **kwargs):
        self.batches.append((x.shape[0], kwargs.get("skip_layers")))
        return self.model(x, *args, **kwargs)


def _x():
    return torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))


def test_cfg_one_skips_the_unconditional_pass_unless_asked(model, cond):
    counting = Counting(model)
    plain = GuidedVelocity(counting, cond, cfg=1.0, slg=None, steps=4)(_x(), torch.tensor(0.5), 0)
    assert counting.batches == [(2, None)]
    counting.batches.clear()
    both = GuidedVelocity(counting, cond, cfg=1.0, slg=None, steps=4, uncond_at_cfg_one=True)(_x(), torch.tensor(0.5), 0)
    assert counting.batches == [(4, None)]
    assert (plain - both).abs().max() < 1e-5  # at cfg 1 the unconditional pass cannot change the result


def test_batch_order_does_not_change_the_result(model, cond):
    a = GuidedVelocity(model, cond, cfg=4.0, slg=None, steps=4)(_x(), torch.tensor(0.7), 1)
    b = GuidedVelocity(model, cond, cfg=4.0, slg=None, steps=4, uncond_first=True)(_x(), torch.tensor(0.7), 1)
    assert (a - b).abs().max() < 1e-5


def test_cfg_formula(model, cond):
    x, sigma = _x(), torch.tensor(0.6)
    t = sigma * 1000
    v_cond = model(x, t, cond.y, cond.context)
    v_uncond = model(x, t, cond.negative_y, cond.negative_context)
    got = GuidedVelocity(model, cond, cfg=5.0, slg=None, steps=4)(x, sigma, 0)
    assert (got - (v_uncond + 5.0 * (v_cond - v_uncond))).abs().max() < 1e-4


def test_slg_runs_only_inside_its_window(model, cond):
    """steps * start < step < steps * end: with 10 steps, start 0.1 and end 0.4, steps 2 and 3."""
    slg = SkipLayerGuidanceConfig(scale=2.5, start=0.1, end=0.4, layers=(0,))
    counting = Counting(model)
    velocity = GuidedVelocity(counting, cond, cfg=4.0, slg=slg, steps=10)
    for step in range(10):
        velocity(_x(), torch.tensor(0.5), step)
    # Each step makes one CFG call; steps 2 and 3 add one conditional call that skips block 0.
    assert counting.batches == [(4, None)] * 3 + [(2, (0,)), (4, None), (2, (0,))] + [(4, None)] * 6


def test_slg_adds_scale_times_cond_minus_skipped(model, cond):
    x, sigma = _x(), torch.tensor(0.5)
    t = sigma * 1000
    slg = SkipLayerGuidanceConfig(scale=2.5, start=0.0, end=1.0, layers=(1,))
    plain = GuidedVelocity(model, cond, cfg=4.0, slg=None, steps=4)(x, sigma, 1)
    guided = GuidedVelocity(model, cond, cfg=4.0, slg=slg, steps=4)(x, sigma, 1)
    v_cond = model(x, t, cond.y, cond.context)
    v_skip = model(x, t, cond.y, cond.context, skip_layers=[1])
    assert (guided - (plain + 2.5 * (v_cond - v_skip))).abs().max() < 1e-4


def test_batched_images_equal_images_generated_alone(files):
    """Image k of a batched run uses seed + k; generating it alone with that seed gives the same image."""
    sd3 = StableDiffusion3(files)
    prompts = ["a photo of a cat", "an astronaut riding a horse"]
    batched = sd3.generate(prompts, height=32, width=48, steps=3, cfg=4.0, seed=100, num_images=2, batch_size=4)
    assert batched.seeds == [100, 101, 102, 103]
    assert batched.prompts == [prompts[0], prompts[0], prompts[1], prompts[1]]
    for k in (1, 2):
        alone = sd3.generate([batched.prompts[k]], height=32, width=48, steps=3, cfg=4.0, seed=batched.seeds[k])
        assert (alone.latents[0] - batched.latents[k]).abs().max() < 1e-4
