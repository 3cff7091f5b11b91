"""`rules="comfyui"` against a tokenizer written here from the rules of ComfyUI's `SDTokenizer`.

The reference below follows comfy/sd1_clip.py `tokenize_with_weights` as docs/reference.md §6
states it, with transformers' tokenizers: each weighted segment is tokenized whole (its ids between
BOS and EOS for CLIP, before EOS for T5); CLIP chunks of 77 are filled segment by segment, a segment
that does not fit closing the chunk unless it has 8 or more tokens (then it is cut), and every chunk
is kept; T5 is one row, EOS, padding to 77. The weight syntax itself is parsed by `weighted_segments`,
tested against Stability's scanner (tests/clip/test_stability_tokenizer.py), which ComfyUI shares.
"""

import pytest
import torch

from sd3.clip import CLIPTokenizer, T5Tokenizer
from sd3.clip.prompt_syntax import weighted_segments
from sd3.clip.tokenizer import MAX_CLIP_CHUNKS
from sd3.errors import TextEncodingError


def _segments(prompt: str) -> list[tuple[str, float]]:
    """ComfyUI's segments, its unknown embeddings dropped as `_try_get_embedding` leaves them: the
    name goes, commas around it stay in front of the rest."""
    out = []
    for text, weight in weighted_segments(prompt):
        for k, part in enumerate(text.replace("\nembedding:", " embedding:").split(" embedding:")):
            if k or part.startswith("embedding:"):
                words = part.removeprefix("embedding:").strip("\n").split()
                name, rest = (words[0], " ".join(words[1:])) if words else ("", "")
                part = f"{name[len(name.strip(',')):]} {rest}" if name.strip(",") != name else rest
            if part:
                out.append((part, weight))
    return out


def reference_clip(tokenizer, prompt: str, pad_id: int) -> tuple[list[list[int]], list[list[float]]]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    chunks, chunk = [], [(bos, 1.0)]
    for text, weight in _segments(prompt):
        ids = [(i, weight) for i in tokenizer(text).input_ids[1:-1]]
        long_segment = len(ids) >= 8
        while ids:
            if len(chunk) + len(ids) <= 76:
                chunk, ids = chunk + ids, []
                continue
            if long_segment:
                space = 76 - len(chunk)
                chunk, ids = chunk + ids[:space], ids[space:]
            chunks.append(chunk + [(eos, 1.0)])
            chunk = [(bos, 1.0)]
    chunks.append(chunk + [(eos, 1.0)])
    chunks = [c + [(pad_id, 1.0)] * (77 - len(c)) for c in chunks]
    return [[i for i, _ in c] for c in chunks], [[w for _, w in c] for c in chunks]


def reference_t5(tokenizer, prompt: str) -> tuple[list[int], list[float]]:
    pairs = [(i, w) for text, w in _segments(prompt) for i in tokenizer(text).input_ids[:-1]] + [(1, 1.0)]
    pairs += [(0, 1.0)] * (77 - len(pairs))
    return [i for i, _ in pairs], [w for _, w in pairs]


def _prompts(one: str = "cat", three: str = "zqj", long: str = "zqxjkvwzqx") -> list[str]:
    return [
        "",
        "a photo of a cat",
        "a (red:1.5) cat on a ((chair)), (blurry:0.5)",
        "((a photo:1.2) of a cat:0.8) (hello:world) (:1.5) (x: 2) (a) (b)",
        "a \\(red\\) cat \\(x:1.5\\)",
        "a\ncat\twith a tab and a photo embedding:style of a cat embedding:other\nembedding:third",
        "(a embedding:style, cat:1.2) embedding:other,, and a (dog embedding:x)",
        " ".join([one] * 75),  # one full chunk
        " ".join([one] * 192),  # 192 tokens: a plain prompt is one segment, cut into 3 chunks
        " ".join([one] * 73) + " (" + three + ":1.3)",  # a 3-token segment that does not fit moves on
        " ".join([one] * 70) + " (" + long + ":0.7)",  # a 10-token segment is cut across chunks
        "(" + " ".join([one] * 100) + ":1.2) " + " ".join([three] * 30),
    ]


@pytest.mark.parametrize("pad", ["<|endoftext|>", "!"])
def test_clip_chunks_and_weights_equal_the_rules(clip_tokenizer, clip_tokenizer_json, pad):
    ours = CLIPTokenizer(clip_tokenizer_json, pad_token=pad, rules="comfyui")
    pad_id = clip_tokenizer.convert_tokens_to_ids(pad)
    for prompt in _prompts():
        ids, weights = ours.weighted(prompt)
        want_ids, want_weights = reference_clip(clip_tokenizer, prompt, pad_id)
        assert ids.tolist() == want_ids, prompt[:80]
        assert weights.tolist() == [[pytest.approx(w) for w in row] for row in want_weights], prompt[:80]


def test_a_192_token_prompt_makes_three_chunks(clip_tokenizer_json):
    ids, weights = CLIPTokenizer(clip_tokenizer_json, rules="comfyui").weighted(" ".join(["cat"] * 192))
    assert ids.shape == (3, 77) and bool((weights == 1).all())


def test_real_vocabulary(real_clip, tmp_path):
    from sd3.testing.tiny.tokenizers import save_clip_tokenizer_json, transformers_clip_tokenizer

    tokenizer = transformers_clip_tokenizer(*real_clip)
    ours = CLIPTokenizer(save_clip_tokenizer_json(tokenizer, tmp_path / "tokenizer.json"), rules="comfyui")
    for prompt in ["(masterpiece:1.2), best quality, ((detailed)), a \\(cute\\) robot",
                   "an astronaut riding a horse " * 40 + "(photorealistic:1.4)",
                   "café crème (brûlée:1.4) 中文 🐱🚀"]:
        ids, weights = ours.weighted(prompt)
        want_ids, want_weights = reference_clip(tokenizer, prompt, 49407)
        assert ids.tolist() == want_ids
        assert weights.tolist() == [[pytest.approx(w) for w in row] for row in want_weights]


def test_t5_is_one_uncut_row_with_weights(t5_tokenizer, t5_tokenizer_json):
    ours = T5Tokenizer(t5_tokenizer_json, truncate=False, rules="comfyui")
    for prompt in _prompts("cat", "zebra", "photographically"):
        ids, weights = ours.weighted(prompt)
        want_ids, want_weights = reference_t5(t5_tokenizer, prompt)
        assert ids[0].tolist() == want_ids, prompt[:80]
        assert weights[0].tolist() == [pytest.approx(w) for w in want_weights], prompt[:80]
    assert ours(" ".join(["cat"] * 500)).shape[1] > 77  # never cut, unlike Stability's 226 characters


def test_bounds_refuse_in_one_line(clip_tokenizer_json, t5_tokenizer_json):
    clip = CLIPTokenizer(clip_tokenizer_json, rules="comfyui")
    assert clip.weighted(" ".join(["cat"] * 75 * MAX_CLIP_CHUNKS))[0].shape == (MAX_CLIP_CHUNKS, 77)
    with pytest.raises(TextEncodingError, match=f"makes {MAX_CLIP_CHUNKS + 1} CLIP chunks"):
        clip.weighted(" ".join(["cat"] * (75 * MAX_CLIP_CHUNKS + 1)))
    with pytest.raises(TextEncodingError, match="call weighted"):
        clip("a cat")
    with pytest.raises(TextEncodingError, match="more than the 1024"):
        T5Tokenizer(t5_tokenizer_json, truncate=False, rules="comfyui")("cat " * 1024)


def test_other_rules_weigh_everything_one(clip_tokenizer_json, t5_tokenizer_json):
    for rules in ("plain", "stability"):
        ids, weights = CLIPTokenizer(clip_tokenizer_json, rules=rules).weighted("a (red:1.5) cat")
        assert ids.shape == (1, 77) and bool((weights == 1).all())
        ids, weights = T5Tokenizer(t5_tokenizer_json, rules=rules).weighted("a (red:1.5) cat")
        assert bool((weights == 1).all()) and weights.shape == ids.shape
    assert torch.equal(CLIPTokenizer(clip_tokenizer_json).weighted("a cat")[0], CLIPTokenizer(clip_tokenizer_json)("a cat"))
