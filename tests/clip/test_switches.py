"""Each reference switch changes the conditioning exactly as documented (README, text encoding).

- Pad token (CLIP-L: EOS for Stability/diffusers, "!" for Candle): CLIP attention is causal, so
  only the context rows after EOS change; the rows up to EOS and the pooled vector do not.
- GELU (CLIP-G: exact for Stability/diffusers, tanh approximation for Candle): every CLIP-G output
  moves, by a small amount.
- T5 length (Candle 77, diffusers 256, Stability >= 77 never cut): the context length changes, and
  since T5 attends over its padding without a mask, so do the prompt's own T5 rows.
"""

import pytest
import torch

from sd3.clip import CLIPTokenizer, T5Tokenizer, TripleTextEncoder, load_clip_g, load_clip_l, load_t5
from sd3.testing.tiny.pipeline import write_tiny_sd3

PROMPT = "a photo of a cat sitting on a red chair"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_sd3(tmp_path_factory.mktemp("sd3"), seed=7)


def _encoder(tiny, *, l_pad="<|endoftext|>", g_act="gelu", t5_length=77, truncate=True):
    return TripleTextEncoder(
        load_clip_l(tiny.checkpoint), CLIPTokenizer(tiny.clip_l_tokenizer, pad_token=l_pad),
        load_clip_g(tiny.checkpoint, hidden_act=g_act), CLIPTokenizer(tiny.clip_g_tokenizer, pad_token="!"),
        load_t5(tiny.checkpoint), T5Tokenizer(tiny.t5_tokenizer, max_length=t5_length, truncate=truncate),
    )


def test_clip_l_pad_token_changes_only_rows_after_eos(tiny):
    eos_context, eos_y = _encoder(tiny).encode(PROMPT)
    bang_context, bang_y = _encoder(tiny, l_pad="!").encode(PROMPT)
    tokenizer = CLIPTokenizer(tiny.clip_l_tokenizer)
    eos_at = tokenizer(PROMPT)[0].tolist().index(tokenizer.eos_id)
    width_l = tiny.clip_l.width
    assert torch.equal(eos_y, bang_y)
    assert torch.equal(eos_context[:, : eos_at + 1], bang_context[:, : eos_at + 1])
    assert (eos_context[:, eos_at + 1 : 77, :width_l] - bang_context[:, eos_at + 1 : 77, :width_l]).abs().max() > 0.1
    assert torch.equal(eos_context[:, :, width_l:], bang_context[:, :, width_l:])  # CLIP-G and T5 untouched


def test_clip_g_gelu_variant_moves_clip_g_outputs_slightly(tiny):
    exact_context, exact_y = _encoder(tiny).encode(PROMPT)
    tanh_context, tanh_y = _encoder(tiny, g_act="gelu_tanh").encode(PROMPT)
    width_l, width_g = tiny.clip_l.width, tiny.clip_g.width
    g_rows = slice(width_l, width_l + width_g)
    delta = (exact_context[:, :77, g_rows] - tanh_context[:, :77, g_rows]).abs().max()
    assert 0 < delta < 0.05 * exact_context[:, :77, g_rows].abs().max()
    assert (exact_y[:, width_l:] - tanh_y[:, width_l:]).abs().max() > 0
    assert torch.equal(exact_context[:, :, :width_l], tanh_context[:, :, :width_l])  # CLIP-L untouched
    assert torch.equal(exact_y[:, :width_l], tanh_y[:, :width_l])


def test_t5_length_changes_context_length_and_values(tiny):
    candle, _ = _encoder(tiny, t5_length=77).encode(PROMPT)
    diffusers, _ = _encoder(tiny, t5_length=256).encode(PROMPT)
    assert candle.shape[1] == 77 + 77 and diffusers.shape[1] == 77 + 256
    assert torch.equal(candle[:, :77], diffusers[:, :77])  # the CLIP part does not depend on it
    assert (candle[:, 77:80] - diffusers[:, 77:80]).abs().max() > 1e-3  # the prompt's own T5 rows move


def test_t5_without_truncation_keeps_every_token(tiny):
    long_prompt = "a photo of a cat " * 30  # 150 T5 tokens
    cut, _ = _encoder(tiny, t5_length=77).encode(long_prompt)
    kept, _ = _encoder(tiny, t5_length=77, truncate=False).encode(long_prompt)
    assert cut.shape[1] == 77 + 77 and kept.shape[1] == 77 + 151
