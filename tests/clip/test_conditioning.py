"""The whole conditioning against diffusers' `StableDiffusion3Pipeline.encode_prompt`.

Same tiny checkpoint, same vocabularies (CLIP-L padded with EOS, CLIP-G with "!", as the
stabilityai repos configure diffusers), T5 length 256 on both sides. Tolerance: max |Δ| ≤ 1e-5 in
float32 (the T5 part carries ~2e-6 of summation-order difference).
"""

import pytest
import torch

from sd3.clip import CLIPTokenizer, T5Tokenizer, TripleTextEncoder, load_clip_g, load_clip_l, load_t5
from sd3.testing.tiny.pipeline import diffusers_pipeline, write_tiny_sd3

TOLERANCE = 1e-5
PROMPTS = ["a photo of a cat sitting on a red chair", "an astronaut riding a horse on the moon"]
NEGATIVE = ["blurry, low quality", "watermark, text"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_sd3(tmp_path_factory.mktemp("sd3"))


def _ours(tiny, with_t5: bool) -> TripleTextEncoder:
    return TripleTextEncoder(
        load_clip_l(tiny.checkpoint),
        CLIPTokenizer(tiny.clip_l_tokenizer),
        load_clip_g(tiny.checkpoint),
        CLIPTokenizer(tiny.clip_g_tokenizer, pad_token="!"),
        load_t5(tiny.checkpoint) if with_t5 else None,
        T5Tokenizer(tiny.t5_tokenizer, max_length=256) if with_t5 else None,
        t5_length=256,
        context_dim=tiny.t5.d_model,
    )


def _close(got, want):
    assert got.shape == want.shape
    delta = (got - want).abs().max().item()
    assert delta <= TOLERANCE, f"max |Δ| = {delta:.2e}"


@pytest.mark.parametrize("with_t5", [True, False])
def test_encode_matches_diffusers_encode_prompt(tiny, with_t5):
    pipe = diffusers_pipeline(tiny, with_t5=with_t5)
    with torch.no_grad():  # as diffusers' __call__ runs it (with autograd on, its SDPA takes another kernel)
        embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompt=PROMPTS, prompt_2=None, prompt_3=None, negative_prompt=NEGATIVE,
            do_classifier_free_guidance=True, max_sequence_length=256, device=torch.device("cpu"),
        )
    ours = _ours(tiny, with_t5)
    context, y = ours.encode(PROMPTS)
    negative_context, negative_y = ours.encode(NEGATIVE)
    assert context.shape == (2, 77 + 256, tiny.t5.d_model) and y.shape == (2, 128 + 192)
    _close(context, embeds)
    _close(y, pooled)
    _close(negative_context, negative_embeds)
    _close(negative_y, negative_pooled)
    assert (context[:, 77:].abs().max() > 0) == with_t5


def test_empty_negative_prompt_matches_diffusers_default(tiny):
    """diffusers encodes "" when no negative prompt is given; ours encodes "" the same way."""
    pipe = diffusers_pipeline(tiny)
    with torch.no_grad():
        _, negative_embeds, _, negative_pooled = pipe.encode_prompt(
            prompt=PROMPTS[0], prompt_2=None, prompt_3=None, do_classifier_free_guidance=True,
            max_sequence_length=256, device=torch.device("cpu"),
        )
    context, y = _ours(tiny, True).encode("")
    _close(context, negative_embeds)
    _close(y, negative_pooled)
