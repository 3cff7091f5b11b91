"""Small tokenizers in the real formats, built offline: a CLIP byte-level BPE and a T5 Unigram.

The CLIP one is built like CLIP's own vocabulary (256 byte symbols, the same with "</w>", then
merged pieces, then <|startoftext|> and <|endoftext|> as the last two ids), with merges learned on a
few prompts. Each is returned both as transformers' tokenizer (the reference) and as the
tokenizer.json file our library reads.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

CORPUS = [
    "a photo of a cat sitting on a red chair",
    "an astronaut riding a horse on the moon",
    "a cute robot holding a sign that says hello world",
    "high quality, detailed, oil painting of mountains at sunset",
    "blurry, low quality, watermark, text",
]
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP's printable stand-in for each byte, in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


@lru_cache(maxsize=None)
def clip_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    trainer_model = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    trainer_model.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    trainer_model.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>",
        show_progress=False,
    )
    trainer_model.train_from_iterator(CORPUS * 4, trainer)
    merges = tuple(tuple(m) for m in json.loads(trainer_model.to_str())["model"]["merges"])
    alphabet = bytes_to_unicode()
    pieces = alphabet + [c + "</w>" for c in alphabet]
    for a, b in merges:
        if a + b not in pieces:
            pieces.append(a + b)
    pieces += ["<|startoftext|>", "<|endoftext|>"]
    return {piece: i for i, piece in enumerate(pieces)}, merges


def transformers_clip_tokenizer(vocab: dict[str, int], merges, pad_token: str = "<|endoftext|>"):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad_token, model_max_length=77)


def tiny_clip_tokenizer():
    """(transformers CLIPTokenizer, vocabulary size) for the small CLIP vocabulary."""
    vocab, merges = clip_vocab_and_merges()
    return transformers_clip_tokenizer(vocab, merges), len(vocab)


def save_clip_tokenizer_json(tokenizer, path: Path) -> Path:
    """Write a transformers CLIP tokenizer as the tokenizer.json a hub repo ships."""
    tokenizer.backend_tokenizer.save(str(path))
    return path


def tiny_t5_tokenizer(model_max_length: int = 512):
    """A transformers T5 tokenizer (Unigram, <pad> 0, </s> 1, <unk> 2) over the corpus' words."""
    from transformers import T5TokenizerFast

    words = sorted({w for line in CORPUS for w in line.replace(",", " ,").split()})
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁" + w, -float(i % 7 + 1)) for i, w in enumerate(words)]
    pieces += [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz,!"]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def real_clip_vocab_and_merges(cache: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's real 49408-token vocabulary, from the BPE file inside the open-clip-torch wheel.

    Built as OpenAI's and open_clip's `SimpleTokenizer` build it: 256 byte symbols, the same with
    "</w>", the 48894 merged pieces in merge order, then <|startoftext|> (49406), <|endoftext|> (49407).
    Raises OSError when the wheel cannot be fetched.
    """
    import gzip
    import subprocess
    import sys
    import zipfile

    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("open_clip_torch-*.whl"))
    if not wheels:
        run = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "open-clip-torch", "-d", str(cache)],
            capture_output=True, text=True, timeout=300,
        )
        wheels = sorted(cache.glob("open_clip_torch-*.whl"))
        if run.returncode or not wheels:
            raise OSError(f"pip download open-clip-torch failed: {run.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        lines = gzip.decompress(wheel.read("open_clip/bpe_simple_vocab_16e6.txt.gz")).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = bytes_to_unicode()
    pieces = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    pieces += ["<|startoftext|>", "<|endoftext|>"]
    return {piece: i for i, piece in enumerate(pieces)}, merges
