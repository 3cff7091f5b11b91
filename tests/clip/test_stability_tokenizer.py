"""`rules="stability"` against a tokenizer written here from the rules of Stability's `other_impls.py`.

The reference below is built from the rules as docs/reference.md §6 states them, not from our code:
transformers' tokenizers tokenize each word alone (its ids between BOS and EOS), brackets are
removed innermost group first, and every 77-token chunk is built before the first one is kept, as
Stability's `SDTokenizer.tokenize_with_weights` builds them. The prompts are chosen to hit each rule:
weights, nesting, escapes, a colon that is not a weight, words joined by brackets, newlines, a short
word and a long word at the 75-token boundary, a long prompt, an empty one.
"""

import re

import pytest

from sd3.clip import CLIPTokenizer, T5Tokenizer
from sd3.clip.prompt_syntax import weighted_segments, words
from sd3.errors import TextEncodingError

GROUP = re.compile(r"\(([^()]*)\)")  # an innermost bracket group
BOUNDARY = "\x03"  # a group's edges separate words, as Stability's segments do


def _without_weights(text: str) -> str:
    """Balanced weight syntax removed: `(x)` and `(x:1.5)` become x between word boundaries."""
    text = text.replace("\\(", "\x01").replace("\\)", "\x02")

    def strip(match):
        inner = match.group(1)
        head, colon, tail = inner.rpartition(":")
        if colon and head:
            try:
                float(tail)
                inner = head
            except ValueError:
                pass
        return BOUNDARY + inner + BOUNDARY

    while GROUP.search(text):
        text = GROUP.sub(strip, text)
    return text.replace("\x01", "(").replace("\x02", ")")


def _reference_words(text: str) -> list[str]:
    return [w for w in re.split(f"[ \n{BOUNDARY}]", _without_weights(text)) if w]


def reference_clip_ids(tokenizer, prompt: str, pad_id: int) -> list[int]:
    """Stability's first CLIP chunk, built from the rules with a transformers tokenizer."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    chunks, chunk = [], [bos]
    for word in _reference_words(prompt):
        ids = tokenizer(word).input_ids[1:-1]
        long_word = len(ids) >= 8
        while ids:
            if len(chunk) + len(ids) <= 76:
                chunk, ids = chunk + ids, []
                continue
            if long_word:  # a long word fills the chunk and goes on in the next
                space = 76 - len(chunk)
                chunk, ids = chunk + ids[:space], ids[space:]
            chunks.append(chunk + [eos])
            chunk = [bos]
    chunks.append(chunk + [eos])
    return chunks[0] + [pad_id] * (77 - len(chunks[0]))


def reference_t5_ids(tokenizer, prompt: str) -> list[int]:
    ids = [i for word in _reference_words(prompt[:226]) for i in tokenizer(word).input_ids[:-1]] + [1]
    return ids + [0] * (77 - len(ids))


def _prompts(tokenizer) -> list[str]:
    """Prompts for the tiny vocabulary, with the token counts that put words at the boundary."""
    one, three, long = "cat", "zqj", "zqxjkvwzqx"
    assert [len(tokenizer(w).input_ids) - 2 for w in (one, three, long)] == [1, 3, 10]
    return [
        "",
        "a photo of a cat",
        "a (red:1.5) cat on a ((chair)), (blurry:0.5)",
        "((a photo:1.2) of a cat:0.8) (hello:world) (:1.5) (x: 2)",
        "a \\(red\\) cat \\(x:1.5\\) (a \\) inside)",
        "a(red)cat and(blue)",
        "a\ncat\twith a tab",
        " ".join([one] * 75),  # exactly 75 tokens
        " ".join([one] * 73 + [three]),  # the 3-token word would take places 74-76: it moves on
        " ".join([one] * 72 + [three]),  # ... and here it fits exactly
        " ".join([one] * 70 + [long]),  # a 10-token word is cut at the boundary
        " ".join([one] * 75 + [long]),  # ... even with no place left
        "(" + " ".join([one] * 73) + ":1.3) " + three,
        "a photo of a cat " * 30,
    ]


@pytest.mark.parametrize("pad", ["<|endoftext|>", "!"])
def test_clip_ids_equal_the_rules_based_tokenizer(clip_tokenizer, clip_tokenizer_json, pad):
    ours = CLIPTokenizer(clip_tokenizer_json, pad_token=pad, rules="stability")
    pad_id = clip_tokenizer.convert_tokens_to_ids(pad)
    prompts = _prompts(clip_tokenizer)
    got = ours(prompts).tolist()
    for prompt, row in zip(prompts, got):
        assert row == reference_clip_ids(clip_tokenizer, prompt, pad_id), prompt[:80]


def test_the_rules_change_what_plain_text_gives(clip_tokenizer, clip_tokenizer_json):
    """Each rule, on its own prompt: the ids Stability gives, and that plain tokenization differs."""
    stability = CLIPTokenizer(clip_tokenizer_json, rules="stability")
    plain = CLIPTokenizer(clip_tokenizer_json)
    assert stability("a (red:1.5) cat").tolist() == plain("a red cat").tolist()
    assert stability("a \\(red\\) cat").tolist() == plain("a (red) cat").tolist()
    assert stability("a (red:1.5) cat").tolist() != plain("a (red:1.5) cat").tolist()
    eos = clip_tokenizer.eos_token_id
    moved = stability(" ".join(["cat"] * 73 + ["zqj"]))[0].tolist()
    assert moved[74:] == [eos] * 3  # BOS, 73 cats, then EOS: the 3-token word did not fit
    assert plain(" ".join(["cat"] * 73 + ["zqj"]))[0, 74:76].tolist() == [89, 80]  # plain cuts inside it
    cut = stability(" ".join(["cat"] * 70 + ["zqxjkvwzqx"]))[0].tolist()
    assert cut[71:76] == [89, 80, 87, 73, 74] and cut[76] == eos  # the long word fills the chunk


def test_real_vocabulary(real_clip, tmp_path):
    """The same comparison with CLIP's real vocabulary, where more words are single tokens."""
    from sd3.testing.tiny.tokenizers import save_clip_tokenizer_json, transformers_clip_tokenizer

    tokenizer = transformers_clip_tokenizer(*real_clip)
    ours = CLIPTokenizer(save_clip_tokenizer_json(tokenizer, tmp_path / "tokenizer.json"), rules="stability")
    prompts = [
        "(masterpiece:1.2), best quality, ((detailed)), a \\(cute\\) robot",
        "an astronaut riding a horse " * 12 + "photorealistically",
        "supercalifragilisticexpialidocious " * 10,
        "café crème (brûlée:1.4) 中文 🐱🚀",
    ]
    for prompt, row in zip(prompts, ours(prompts).tolist()):
        assert row == reference_clip_ids(tokenizer, prompt, 49407), prompt[:80]


def test_t5_takes_the_first_226_characters_without_weights(t5_tokenizer, t5_tokenizer_json):
    ours = T5Tokenizer(t5_tokenizer_json, truncate=False, rules="stability")
    prompts = ["", "a (red:1.5) cat", "a photo of a (cat:1.3) " * 20, "(" + "astronaut " * 30 + ":2)"]
    got = ours(prompts)
    for prompt, row in zip(prompts, got.tolist()):
        want = reference_t5_ids(t5_tokenizer, prompt)
        assert row[: len(want)] == want and set(row[len(want) :]) <= {0}, prompt[:60]
    plain = T5Tokenizer(t5_tokenizer_json, truncate=False)
    assert plain(prompts[2]).shape[1] > got.shape[1]  # plain text keeps all 460 characters


@pytest.mark.parametrize(
    "text, segments",
    [
        ("a (red:1.5) ((cat))", [("a ", 1.0), ("red", 1.5), (" ", 1.0), ("cat", 1.1 * 1.1)]),
        ("(a:b)", [("a:b", 1.1)]),  # not a number: the colon stays text
        ("(:1.5)", [(":1.5", 1.1)]),  # a leading colon is text
        ("((a:2) b)", [("a", 2.0), (" b", 1.1)]),
        ("a \\(b\\) c", [("a (b) c", 1.0)]),
        ("x\\[y", [("x\\[y", 1.0)]),  # only brackets escape
        ("a (b", [("a ", 1.0), ("(b", 1.0)]),  # unclosed: the rest is text
        # A stray ")" leaves the bracket count one too low: "((b))" then reads as one group.
        ("a) ((b)) (c)", [("a) (", 1.0), ("b", 1.1), (") (c)", 1.0)]),
    ],
)
def test_weight_syntax(text, segments):
    """Hand-derived from Stability's scanner (its `parse_parentheses` and `token_weights`)."""
    got = weighted_segments(text)
    assert [s for s, _ in got] == [s for s, _ in segments]
    assert [w for _, w in got] == pytest.approx([w for _, w in segments])


def test_words():
    # Brackets and newlines separate words; a tab does not (the word's own tokenization splits it).
    assert words("a(red)cat\nand  (blue:0.5)\tsky") == ["a", "red", "cat", "and", "blue", "\tsky"]


def test_rules_are_checked(clip_tokenizer_json, t5_tokenizer_json):
    with pytest.raises(TextEncodingError, match="unknown tokenizer `rules` 'comfy'"):
        CLIPTokenizer(clip_tokenizer_json, rules="comfy")
    with pytest.raises(TextEncodingError, match="between 1 and 1024"):
        T5Tokenizer(t5_tokenizer_json, max_length=2000)


def test_untruncated_t5_is_bounded(t5_tokenizer_json):
    at_least = T5Tokenizer(t5_tokenizer_json, truncate=False)
    assert at_least("cat " * 1023).shape == (1, 1024)
    with pytest.raises(TextEncodingError, match="makes 1025 T5 tokens, more than the 1024"):
        at_least("cat " * 1024)
    # Stability's rules read 226 characters, so no prompt reaches the bound.
    assert T5Tokenizer(t5_tokenizer_json, truncate=False, rules="stability")("cat " * 5000).shape == (1, 77)
