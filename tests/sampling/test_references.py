"""What each `reference` preset changes in an output: the conditioning, the schedule, the CFG batch, the latents.

docs/reference.md §6 lists where Candle, Stability and diffusers differ; each test here shows one
difference in what the pipeline computes, not in the preset's table.
"""

from dataclasses import replace

import pytest
import torch

from sd3.sampling import REFERENCES, StableDiffusion3

PROMPT = "a photo of a cat"
LONG = " ".join(["an astronaut riding a horse on the moon"] * 20)  # well over 77 T5 tokens
ARGS = dict(height=32, width=32, steps=2, quiet=True)


@pytest.fixture(scope="module")
def conditioning(files):
    return {name: StableDiffusion3(files, reference=name, keep="all").encode([PROMPT, LONG]) for name in REFERENCES}


def test_t5_length_and_truncation(conditioning, files):
    assert conditioning["default"].context.shape[1] == 77 + 77  # Candle: T5 cut to 77
    assert conditioning["diffusers"].context.shape[1] == 77 + 256  # diffusers' max_sequence_length
    # Stability never cuts T5's tokens, but gives T5 only the prompt's first 226 characters.
    assert conditioning["stability"].context.shape[1] == 77 + 77
    cut = StableDiffusion3(files, reference=replace(REFERENCES["stability"], name="all characters", prompt_rules="plain"))
    assert cut.encode([PROMPT, LONG]).context.shape[1] == 77 + 161  # 160 tokens + EOS, never cut


def test_candle_changes_the_clip_rows_and_nothing_else(conditioning, tiny):
    default, candle = conditioning["default"], conditioning["candle"]
    width_l, width_g = tiny.clip_l.width, tiny.clip_g.width
    clip_l, clip_g = slice(0, width_l), slice(width_l, width_l + width_g)
    padding = slice(20, 77)  # after "a photo of a cat"'s EOS: the pad token shows there
    assert not torch.equal(candle.context[0, padding, clip_l], default.context[0, padding, clip_l])  # "!" vs EOS
    assert not torch.equal(candle.context[:, :77, clip_g], default.context[:, :77, clip_g])  # tanh GELU everywhere
    assert torch.equal(candle.context[:, 77:], default.context[:, 77:])  # T5 is the same
    assert torch.equal(conditioning["stability"].context[0, :77], default.context[0, :77])  # EOS padding, exact GELU


def test_schedules(files):
    from diffusers import FlowMatchEulerDiscreteScheduler

    schedule = {name: StableDiffusion3(files, reference=name).options(height=32, width=32, steps=4, cfg=4.0).schedule for name in REFERENCES}
    assert schedule["default"].tolist() == pytest.approx([1.0, 0.9, 0.75, 0.5, 0.0], abs=1e-7)  # shift(i/4), shift 3
    diffusers = FlowMatchEulerDiscreteScheduler(shift=3.0)
    diffusers.set_timesteps(4)
    assert torch.equal(schedule["diffusers"], diffusers.sigmas.float())
    assert (schedule["stability"] - schedule["diffusers"]).abs().max() < 1e-6  # the same values, in float32
    assert schedule["stability"][3] != schedule["default"][3]


def _mmdit_calls(files, name, **settings):
    """The batch sizes the MMDiT saw, its first y rows per call, and each step's latents."""
    calls, steps = [], []

    def on_load(component, module):
        if component == "mmdit":
            module.register_forward_pre_hook(lambda m, args: calls.append((args[0].shape[0], args[2][0].clone())))

    pipe = StableDiffusion3(files, reference=name, keep="all", on_load=on_load, **settings.pop("pipe", {}))
    pipe.generate(PROMPT, "blurry", seed=1, on_step=lambda i, n, x: steps.append(x.clone()), **ARGS, **settings)
    return pipe, calls, steps


def test_the_unconditional_pass_at_cfg_one(files):
    for name, batch in (("default", 1), ("diffusers", 1), ("candle", 2), ("stability", 2)):
        _, calls, _ = _mmdit_calls(files, name, cfg=1.0)
        assert [size for size, _ in calls] == [batch, batch], name


def test_the_cfg_batch_order(files):
    for name, negative_first in (("default", False), ("diffusers", True)):
        pipe, calls, _ = _mmdit_calls(files, name, cfg=4.0)
        negative_y = pipe.encode(PROMPT, "blurry").negative_y[0]
        assert torch.equal(calls[0][1], negative_y) is negative_first, name


def test_latents_rounded_to_the_model_dtype_between_steps(files):
    for name, rounded in (("default", False), ("candle", True), ("diffusers", True)):
        _, _, steps = _mmdit_calls(files, name, cfg=4.0, pipe={"dtype": "bfloat16"})
        first = steps[0]
        assert torch.equal(first, first.to(torch.bfloat16).float()) is rounded, name


def test_stability_parses_weights_and_drops_them(files):
    """Under `reference="stability"` "a (red:1.5) \\(cat\\)" conditions as the plain text "a red (cat)"
    does (the default reference encodes short prompts as Stability does otherwise): all three encoders."""
    weighted = StableDiffusion3(files, reference="stability", keep="all").encode(["a (red:1.5) \\(cat\\)"])
    default = StableDiffusion3(files, keep="all")
    plain = default.encode(["a red (cat)"])
    assert torch.equal(weighted.context, plain.context) and torch.equal(weighted.y, plain.y)
    assert not torch.equal(default.encode(["a (red:1.5) \\(cat\\)"]).context, plain.context)


def test_untruncated_t5_refuses_an_overlong_prompt_before_loading(files):
    from sd3.errors import ConfigurationError, TextEncodingError

    loaded = []
    unbounded = replace(REFERENCES["default"], name="untruncated", t5_truncate=False)
    pipe = StableDiffusion3(files, reference=unbounded, on_load=lambda name, module: loaded.append(name))
    with pytest.raises(TextEncodingError, match="T5 tokens, more than the 1024"):
        pipe.generate("a photo of a cat " * 300, seed=0, cfg=4.0, **ARGS)
    assert loaded == []
    with pytest.raises(ConfigurationError, match="`t5_length` must be between 1 and 1024 tokens, got 4096"):
        replace(REFERENCES["diffusers"], t5_length=4096)
