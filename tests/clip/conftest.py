"""Fixtures shared by the text-encoder tests: the tiny tokenizers and architectures."""

import os
from pathlib import Path

import pytest

from sd3.testing.tiny.text import TinyCLIP, TinyT5
from sd3.testing.tiny.tokenizers import (
    real_clip_vocab_and_merges,
    save_clip_tokenizer_json,
    tiny_clip_tokenizer,
    tiny_t5_tokenizer,
)


@pytest.fixture(scope="session")
def clip_tokenizer():
    return tiny_clip_tokenizer()[0]


@pytest.fixture(scope="session")
def clip_tokenizer_json(clip_tokenizer, tmp_path_factory):
    return save_clip_tokenizer_json(clip_tokenizer, tmp_path_factory.mktemp("clip_tok") / "tokenizer.json")


@pytest.fixture(scope="session")
def t5_tokenizer():
    return tiny_t5_tokenizer()


@pytest.fixture(scope="session")
def t5_tokenizer_json(t5_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("t5_tok") / "tokenizer.json"
    t5_tokenizer.backend_tokenizer.save(str(path))
    return path


@pytest.fixture(scope="session")
def real_clip():
    """CLIP's real vocabulary and merges (from the open-clip-torch wheel, cached), or a skip with the reason."""
    cache = Path(os.environ.get("SD3_TEST_CACHE", Path.home() / ".cache" / "sd3-from-scratch"))
    try:
        return real_clip_vocab_and_merges(cache)
    except OSError as error:
        pytest.skip(f"the real CLIP vocabulary ships in the open-clip-torch wheel, which could not be fetched: {error}")


@pytest.fixture(scope="session")
def archs(clip_tokenizer, t5_tokenizer):
    """(CLIP-L-like, CLIP-G-like, T5-like) tiny architectures over the tiny vocabularies."""
    vocab = len(clip_tokenizer)
    return (
        TinyCLIP(vocab=vocab),
        TinyCLIP(vocab=vocab, width=192, mlp=384, projection=True, act="gelu"),
        TinyT5(vocab=len(t5_tokenizer)),
    )
