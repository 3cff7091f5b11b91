"""Tokenization for the three encoders, with the `tokenizers` library and `tokenizer.json` files.

CLIP: BOS, at most 75 prompt tokens, EOS, then padding to 77. The pad token differs between the
references (docs/reference.md §6): Stability pads CLIP-L with EOS and CLIP-G with "!" (id 0),
Candle pads both with "!", diffusers uses whatever its tokenizer files name. The prompt itself is
always tokenized as plain text, so a literal "!" in it stays an ordinary BPE piece: a
tokenizer.json saved with pad token "!" lists "!" as an added (special) token, which would match
inside the prompt (diffusers issue #4153), so CLIP tokenizers keep only BOS and EOS as added tokens.

T5: the prompt's tokens, EOS (1), then padding (0). With `truncate`, exactly `max_length` tokens
(Candle 77, diffusers 256); without it, at least `max_length` and never cut (Stability).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer

from sd3.errors import TextEncodingError

logger = logging.getLogger(__name__)

CLIP_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _load(path: str | Path, what: str, keep_added: tuple[str, ...] | None = None) -> Tokenizer:
    """Read a tokenizer.json; with `keep_added`, drop every other added token first."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TextEncodingError(f"{what} tokenizer file not found: {path} (a tokenizer.json is expected)")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        if keep_added is not None:
            spec["added_tokens"] = [t for t in spec.get("added_tokens", []) if t.get("content") in keep_added]
        tokenizer = Tokenizer.from_str(json.dumps(spec))
    except Exception as error:  # tokenizers raises a bare Exception for malformed files
        raise TextEncodingError(f"{path} is not a valid {what} tokenizer.json: {error}") from error
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _as_list(prompts: str | list[str]) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TextEncodingError("prompts must be a string or a non-empty list of strings")
    return prompts


class CLIPTokenizer:
    """Prompts -> (b, 77) CLIP token ids."""

    def __init__(self, tokenizer_file: str | Path, *, pad_token: str | int = EOS) -> None:
        """`pad_token`: a token string of the vocabulary (EOS, "!") or an id (0 is "!")."""
        self.tokenizer = _load(tokenizer_file, "CLIP", keep_added=(BOS, EOS))
        self.bos_id, self.eos_id = self._id(BOS), self._id(EOS)
        self.pad_id = pad_token if isinstance(pad_token, int) else self._id(pad_token)

    def _id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise TextEncodingError(f"the CLIP tokenizer has no token {token!r}; is this a CLIP tokenizer.json?")
        return token_id

    def __call__(self, prompts: str | list[str]) -> torch.Tensor:
        prompts = _as_list(prompts)
        encodings = self.tokenizer.encode_batch(prompts, add_special_tokens=False)
        rows = []
        for prompt, encoding in zip(prompts, encodings):
            ids = encoding.ids
            if len(ids) > CLIP_LENGTH - 2:
                logger.warning(
                    "CLIP takes %d prompt tokens; dropped the last %d of %d: %r",
                    CLIP_LENGTH - 2, len(ids) - (CLIP_LENGTH - 2), len(ids), prompt[:60],
                )
                ids = ids[: CLIP_LENGTH - 2]
            row = [self.bos_id, *ids, self.eos_id]
            rows.append(row + [self.pad_id] * (CLIP_LENGTH - len(row)))
        return torch.tensor(rows, dtype=torch.long)


class T5Tokenizer:
    """Prompts -> (b, n) T5 token ids, n = max_length (truncate) or >= max_length (no truncation)."""

    def __init__(
        self, tokenizer_file: str | Path, *, max_length: int = 77, truncate: bool = True, eos_id: int = 1, pad_id: int = 0
    ) -> None:
        if max_length < 1:
            raise TextEncodingError(f"the T5 length must be at least 1, got {max_length}")
        self.tokenizer = _load(tokenizer_file, "T5")
        self.max_length, self.truncate = max_length, truncate
        self.eos_id, self.pad_id = eos_id, pad_id

    def __call__(self, prompts: str | list[str]) -> torch.Tensor:
        prompts = _as_list(prompts)
        encodings = self.tokenizer.encode_batch(prompts, add_special_tokens=False)
        rows = []
        for prompt, encoding in zip(prompts, encodings):
            ids = encoding.ids
            if self.truncate and len(ids) > self.max_length - 1:
                logger.warning(
                    "T5 length is %d; dropped the last %d of %d prompt tokens: %r",
                    self.max_length, len(ids) - (self.max_length - 1), len(ids), prompt[:60],
                )
                ids = ids[: self.max_length - 1]
            rows.append([*ids, self.eos_id])
        length = max(self.max_length, *(len(row) for row in rows))
        return torch.tensor([row + [self.pad_id] * (length - len(row)) for row in rows], dtype=torch.long)
