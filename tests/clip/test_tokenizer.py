"""Our tokenization against transformers' tokenizers: ids, padding, truncation, the "!" quirk.

Reference: `transformers.CLIPTokenizer` built from the same vocabulary and merges (it assembles
its own normalizer, pre-tokenizer and BPE model), and transformers' T5 tokenizer. Our side reads
only the tokenizer.json file, as it does for the real hub files.
"""

import logging

import pytest

from sd3.clip import CLIPTokenizer, T5Tokenizer
from sd3.errors import TextEncodingError
from sd3.testing.tiny.tokenizers import save_clip_tokenizer_json, transformers_clip_tokenizer

PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT",
    "an astronaut riding a horse on the moon, oil painting, highly detailed",
    "",
    " ",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nmixed",
    "punctuation: commas, periods. semicolons; colons: (brackets) [square] {curly}",
    "quotes 'single' and \"double\" and `back`",
    "contractions: it's, don't, they're, we've, I'm, you'll, he'd",
    "hyphenated-words and under_scores and slashes/like/this",
    "numbers 1234567890 and 3.14 and 1,000,000",
    "a cute robot holding a sign that says hello world",
    "café crème brûlée naïve façade",
    "Ångström, Ærø, Øresund, straße",
    "emoji 🐱🚀✨ and 👩‍👩‍👧 family",
    "chinese 中文 japanese 日本語 korean 한국어",
    "russian кошка greek γάτα arabic قطة hebrew חתול",
    "math symbols ∑ ∫ √ ≠ ≤ ≥ ± × ÷",
    "currency $100 €50 £20 ¥1000",
    "email@example.com and https://example.com/path?query=1",
    "#hashtag @mention &ampersand %percent ^caret *star ~tilde |pipe",
    "repeated!!! exclamations!!",
    "mixed CASE and camelCase and snake_case_words",
    "a" * 50,
    "word " * 90,  # longer than 77 tokens: truncated
    "ultra-detailed 8k octane render, trending on artstation, by greg rutkowski",
    "<|startoftext|> literal special tokens <|endoftext|>",
    "zero-width\u200bspace and non-breaking\u00a0space",
    "combining accents: e\u0301 a\u0300 n\u0303",
    "!",
    "(masterpiece:1.2), best quality, ((detailed))",
]


def _reference_ids(tokenizer, prompts):
    return tokenizer(prompts, padding="max_length", max_length=77, truncation=True).input_ids


def _check_against(tokenizer, tmp_path, prompts, pad_token="<|endoftext|>"):
    ours = CLIPTokenizer(save_clip_tokenizer_json(tokenizer, tmp_path / "tokenizer.json"), pad_token=pad_token)
    got = ours(prompts).tolist()
    want = _reference_ids(tokenizer, prompts)
    mismatched = [p for p, a, b in zip(prompts, got, want) if a != b]
    assert not mismatched, f"{len(mismatched)} prompts tokenize differently, first: {mismatched[0]!r}"


def test_tiny_vocabulary_matches_transformers(clip_tokenizer, tmp_path):
    _check_against(clip_tokenizer, tmp_path, PROMPTS)


def test_real_clip_vocabulary_matches_transformers(real_clip, tmp_path):
    vocab, merges = real_clip
    assert len(vocab) == 49408 and vocab["!"] == 0 and vocab["<|endoftext|>"] == 49407
    tokenizer = transformers_clip_tokenizer(vocab, merges)
    _check_against(tokenizer, tmp_path, PROMPTS)
    # Known ids of OpenAI's CLIP vocabulary: an independent check of how it was rebuilt.
    ours = CLIPTokenizer(tmp_path / "tokenizer.json")
    assert ours("a photo of a cat")[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_real_clip_g_padding_with_exclamation_mark(real_clip, tmp_path):
    """With pad "!" (id 0) we equal transformers on prompts without "!" and keep "!" as text in the others."""
    vocab, merges = real_clip
    tokenizer = transformers_clip_tokenizer(vocab, merges, pad_token="!")
    without = [p for p in PROMPTS if "!" not in p]
    assert len(without) >= 30
    _check_against(tokenizer, tmp_path, without, pad_token="!")
    # That file lists "!" as an added token; ours still reads a prompt's "!" as text, exactly as
    # transformers does with the default pad token.
    ours = CLIPTokenizer(tmp_path / "tokenizer.json", pad_token="!")
    text = transformers_clip_tokenizer(vocab, merges)
    prompt = "repeated!!! exclamations!!"
    got = ours(prompt)[0].tolist()
    end = got.index(49407)
    assert got[: end + 1] == _reference_ids(text, [prompt])[0][: end + 1]
    assert got[end + 1 :] == [0] * (76 - end)
    quirk = _reference_ids(tokenizer, [prompt])[0]
    assert quirk[: end + 1] != got[: end + 1], "transformers with pad '!' turns a literal '!!' into pad tokens"


def test_long_prompt_is_truncated_with_a_warning(clip_tokenizer_json, caplog):
    with caplog.at_level(logging.WARNING, logger="clip.tokenizer"):
        ids = CLIPTokenizer(clip_tokenizer_json)("cat " * 90)  # "cat</w>" is one token
    assert ids.shape == (1, 77) and ids[0, -1] != ids[0, -2]
    assert "dropped the last 15 of 90" in caplog.text


def test_pad_token_choice(clip_tokenizer_json):
    eos_padded = CLIPTokenizer(clip_tokenizer_json)("a cat")[0].tolist()
    bang_padded = CLIPTokenizer(clip_tokenizer_json, pad_token="!")("a cat")[0].tolist()
    zero_padded = CLIPTokenizer(clip_tokenizer_json, pad_token=0)("a cat")[0].tolist()
    eos = eos_padded[3]
    assert eos_padded[4:] == [eos] * 73
    assert bang_padded[:4] == eos_padded[:4] and bang_padded[4:] == [0] * 73 == zero_padded[4:]


def test_t5_matches_transformers_at_256(t5_tokenizer, t5_tokenizer_json):
    prompts = ["a photo of a cat", "an astronaut riding a horse on the moon, oil painting", "", "unknown zzz words"]
    want = t5_tokenizer(prompts, padding="max_length", max_length=256, truncation=True, add_special_tokens=True).input_ids
    assert T5Tokenizer(t5_tokenizer_json, max_length=256)(prompts).tolist() == want


def test_t5_lengths(t5_tokenizer_json, caplog):
    long_prompt = "a photo of a cat " * 30  # 150 tokens
    exactly = T5Tokenizer(t5_tokenizer_json, max_length=77)
    with caplog.at_level(logging.WARNING, logger="clip.tokenizer"):
        ids = exactly([long_prompt, "a cat"])
    assert ids.shape == (2, 77) and ids[0, -1] == 1 and ids[1, 3:].tolist() == [0] * 74
    assert "dropped the last 74 of 150" in caplog.text
    at_least = T5Tokenizer(t5_tokenizer_json, max_length=77, truncate=False)
    assert at_least([long_prompt, "a cat"]).shape == (2, 151)  # never cut: 150 tokens + EOS
    assert at_least("a cat").shape == (1, 77)


def test_tokenizer_file_errors(tmp_path):
    with pytest.raises(TextEncodingError, match="tokenizer file not found"):
        CLIPTokenizer(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(TextEncodingError, match="not a valid T5 tokenizer.json"):
        T5Tokenizer(broken)


def test_a_t5_tokenizer_is_not_a_clip_tokenizer(t5_tokenizer_json):
    with pytest.raises(TextEncodingError, match="no token '<|startoftext|>'"):
        CLIPTokenizer(t5_tokenizer_json)


def test_bad_prompts(clip_tokenizer_json):
    with pytest.raises(TextEncodingError, match="non-empty list of strings"):
        CLIPTokenizer(clip_tokenizer_json)([])
    with pytest.raises(TextEncodingError, match="non-empty list of strings"):
        CLIPTokenizer(clip_tokenizer_json)(["ok", 3])
