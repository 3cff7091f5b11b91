"""Fixtures shared by the text-encoder tests: the tiny tokenizers and architectures."""

import pytest

from sd3.testing.tiny.text import TinyCLIP, TinyT5
from sd3.testing.tiny.tokenizers import save_clip_tokenizer_json, tiny_clip_tokenizer, tiny_t5_tokenizer


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
def archs(clip_tokenizer, t5_tokenizer):
    """(CLIP-L-like, CLIP-G-like, T5-like) tiny architectures over the tiny vocabularies."""
    vocab = len(clip_tokenizer)
    return (
        TinyCLIP(vocab=vocab),
        TinyCLIP(vocab=vocab, width=192, mlp=384, projection=True, act="gelu"),
        TinyT5(vocab=len(t5_tokenizer)),
    )
