"""Tokenization for the three encoders, with the `tokenizers` library and `tokenizer.json` files.

CLIP: BOS, at most 75 prompt tokens, EOS, then padding to 77. The pad token differs between the
references (docs/reference.md §6): Stability pads CLIP-L with EOS and CLIP-G with "!" (id 0),
Candle pads both with "!", diffusers uses whatever its tokenizer files name. The prompt itself is
always tokenized as plain text, so a literal "!" in it stays an ordinary BPE piece: a
tokenizer.json saved with pad token "!" lists "!" as an added (special) token, which would match
inside the prompt (diffusers issue #4153), so CLIP tokenizers keep only BOS and EOS as added tokens.

T5: the prompt's tokens, EOS (1), then padding (0). With `truncate`, exactly `max_length` tokens
(Candle 77, diffusers 256); without it, at least `max_length` and never cut (Stability), but never
more than `MAX_T5_TOKENS`: a longer prompt is an error, not an attention matrix that outgrows memory.

`rules` picks how a prompt becomes tokens (docs/reference.md §6):
- "plain" (Candle, diffusers, our default): the whole prompt is text, brackets included.
- "stability": as Stability's `other_impls.py` (`SDTokenizer`, `SD3Tokenizer`) does. The weight syntax
  `(word:1.5)` is parsed and its weights dropped (`prompt_syntax.py`); the rest is split into words,
  each tokenized alone. CLIP keeps only the first 77-token chunk, which closes before a word that
  would cross it unless the word has 8 or more tokens (then the word is cut). T5 reads only the
  prompt's first 226 characters.
- "comfyui": as ComfyUI's `SDTokenizer.tokenize_with_weights` (comfy/sd1_clip.py) does. The same
  weight syntax is parsed and its weights kept; each weighted segment is tokenized whole. CLIP fills
  77-token chunks (BOS, 75, EOS, padding) and keeps them all: a segment that does not fit closes the
  chunk, unless it has 8 or more tokens, when it is cut across chunks. T5 is one row of at least 77,
  never cut. `weighted()` returns the ids with each token's weight (clip/weighted.py applies them).
  Bounds: at most MAX_CLIP_CHUNKS chunks and MAX_T5_TOKENS T5 tokens; more is a TextEncodingError.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer

from sd3.clip.prompt_syntax import weighted_segments, words
from sd3.errors import TextEncodingError

logger = logging.getLogger(__name__)

CLIP_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_T5_TOKENS = 1024  # the longest T5 sequence any setting produces, EOS and padding included
MAX_CLIP_CHUNKS = 14  # the most 77-token CLIP chunks ComfyUI's rules keep: 1,078 rows, at least 1,024 tokens
RULES = ("plain", "stability", "comfyui")
STABILITY_LONG_WORD = 8  # a word of this many tokens may be split across Stability's (and ComfyUI's) CLIP chunks
EMBEDDING = "embedding:"  # ComfyUI's textual-inversion marker (embeddings are not supported: the name is dropped)
STABILITY_T5_CHARACTERS = 226  # Stability's `SD3Tokenizer` gives T5 `text[:226]`


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


def _check_rules(rules: str) -> str:
    if rules not in RULES:
        raise TextEncodingError(f"unknown tokenizer `rules` {rules!r}; choose one of {', '.join(RULES)}")
    return rules


def _word_by_word(tokenizer: Tokenizer, prompt: str) -> list[list[int]]:
    """Each word's token ids, as Stability tokenizes them: weight syntax removed, one word at a time."""
    prompt_words = words(prompt)
    return [e.ids for e in tokenizer.encode_batch(prompt_words, add_special_tokens=False)] if prompt_words else []


def _comfyui_groups(tokenizer: Tokenizer, prompt: str) -> list[tuple[list[int], float]]:
    """ComfyUI's token groups: each weighted segment's ids, tokenized whole, with its weight.

    A segment is cut before every " embedding:" or newline-"embedding:", as ComfyUI cuts it. This
    project loads no embeddings: the name is dropped and the rest of its group read on, as ComfyUI's
    `_try_get_embedding` does for a name it cannot find (commas around the name stay with the rest)."""
    groups = []
    for segment, weight in weighted_segments(prompt):
        parts = segment.replace("\n" + EMBEDDING, " " + EMBEDDING).split(" " + EMBEDDING)
        for k, part in enumerate(parts):
            text = EMBEDDING + part if k else part
            if text.startswith(EMBEDDING):
                name, *rest = text[len(EMBEDDING):].strip("\n").split() or [""]
                _warn_embedding(name)
                stripped = name.strip(",")
                text = f"{name[len(stripped):]} {' '.join(rest)}" if len(stripped) < len(name) else " ".join(rest)
            if text:
                groups.append((tokenizer.encode(text, add_special_tokens=False).ids, weight))
    return groups


_WARNED: set[str] = set()


def _warn_embedding(name: str) -> None:
    if name not in _WARNED:
        _WARNED.add(name)
        logger.warning("textual-inversion embeddings are not supported: dropped %r", EMBEDDING + name)


def _as_list(prompts: str | list[str]) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TextEncodingError("prompts must be a string or a non-empty list of strings")
    return prompts


class CLIPTokenizer:
    """Prompts -> (b, 77) CLIP token ids: BOS, at most 75 prompt tokens, EOS, padding."""

    def __init__(self, tokenizer_file: str | Path, *, pad_token: str | int = EOS, rules: str = "plain") -> None:
        """`pad_token`: a token string of the vocabulary (EOS, "!") or an id (0 is "!"); `rules`:
        "plain" or "stability" (module docstring). Raises TextEncodingError for a missing or invalid file."""
        self.rules = _check_rules(rules)
        self.tokenizer = _load(tokenizer_file, "CLIP", keep_added=(BOS, EOS))
        self.bos_id, self.eos_id = self._id(BOS), self._id(EOS)
        self.pad_id = pad_token if isinstance(pad_token, int) else self._id(pad_token)

    def _id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise TextEncodingError(f"the CLIP tokenizer has no token {token!r}; is this a CLIP tokenizer.json?")
        return token_id

    def __call__(self, prompts: str | list[str]) -> torch.Tensor:
        """A prompt or a list of b prompts -> (b, 77) int64 ids; dropped tokens are logged as a warning.

        Under "comfyui" rules a prompt makes several chunks: use `weighted()`."""
        prompts = _as_list(prompts)
        if self.rules == "comfyui":
            raise TextEncodingError("under ComfyUI's rules a prompt makes one or more chunks: call weighted()")
        rows = []
        for prompt in prompts:
            ids, total = self._prompt_ids(prompt)
            if len(ids) < total:
                logger.warning(
                    "CLIP kept %d prompt tokens; dropped the last %d of %d: %r", len(ids), total - len(ids), total, prompt[:60]
                )
            row = [self.bos_id, *ids, self.eos_id]
            rows.append(row + [self.pad_id] * (CLIP_LENGTH - len(row)))
        return torch.tensor(rows, dtype=torch.long)

    def weighted(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt -> ids (k, 77) int64 and weights (k, 77) float32: its k chunks under ComfyUI's rules
        (`rules="comfyui"`; under the others, one chunk with weights 1). BOS, EOS and padding weigh 1.

        Raises TextEncodingError for more than MAX_CLIP_CHUNKS chunks."""
        if self.rules != "comfyui":
            ids = self([prompt])
            return ids, torch.ones(ids.shape)
        chunk, chunks = [(self.bos_id, 1.0)], []
        chunks.append(chunk)
        for ids, weight in _comfyui_groups(self.tokenizer, prompt):
            group, long = [(i, weight) for i in ids], len(ids) >= STABILITY_LONG_WORD
            while group:
                room = CLIP_LENGTH - 1 - len(chunk)
                if len(group) <= room:
                    chunk += group
                    break
                if long:  # a long segment fills the chunk; its rest goes on in the next
                    chunk += group[:room]
                    group = group[room:]
                chunk += [(self.eos_id, 1.0)] + [(self.pad_id, 1.0)] * (CLIP_LENGTH - 1 - len(chunk))
                chunk = [(self.bos_id, 1.0)]
                chunks.append(chunk)
        chunk += [(self.eos_id, 1.0)] + [(self.pad_id, 1.0)] * (CLIP_LENGTH - 1 - len(chunk))
        if len(chunks) > MAX_CLIP_CHUNKS:
            raise TextEncodingError(
                f"the prompt makes {len(chunks)} CLIP chunks of {CLIP_LENGTH} tokens, more than the {MAX_CLIP_CHUNKS} "
                f"this project bounds ComfyUI's rules to; shorten it: {prompt[:60]!r}"
            )
        return (torch.tensor([[i for i, _ in c] for c in chunks], dtype=torch.long),
                torch.tensor([[w for _, w in c] for c in chunks], dtype=torch.float32))

    def _prompt_ids(self, prompt: str) -> tuple[list[int], int]:
        """(the ids between BOS and EOS, the prompt's token count)."""
        room = CLIP_LENGTH - 2
        if self.rules == "plain":
            ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
            return ids[:room], len(ids)
        # Stability's first chunk: whole words while they fit; the word that does not fit closes the
        # chunk, unless it is long, when it fills the chunk and its rest would start the next one.
        groups, taken = _word_by_word(self.tokenizer, prompt), []
        for group in groups:
            if len(group) > room - len(taken):
                if len(group) >= STABILITY_LONG_WORD:
                    taken += group[: room - len(taken)]
                break
            taken += group
        return taken, sum(len(group) for group in groups)


class T5Tokenizer:
    """Prompts -> (b, n) T5 token ids, n = max_length (truncate) or >= max_length (no truncation)."""

    def __init__(
        self,
        tokenizer_file: str | Path,
        *,
        max_length: int = 77,
        truncate: bool = True,
        eos_id: int = 1,
        pad_id: int = 0,
        rules: str = "plain",
    ) -> None:
        """`max_length`: 1 to MAX_T5_TOKENS; `rules`: "plain" or "stability" (module docstring).
        Raises TextEncodingError for a bad length or rule, or a missing or invalid file."""
        if not 1 <= max_length <= MAX_T5_TOKENS:
            raise TextEncodingError(f"the T5 length must be between 1 and {MAX_T5_TOKENS}, got {max_length}")
        self.rules = _check_rules(rules)
        self.tokenizer = _load(tokenizer_file, "T5")
        self.max_length, self.truncate = max_length, truncate
        self.eos_id, self.pad_id = eos_id, pad_id

    def _weighted_ids(self, prompt: str) -> list[tuple[int, float]]:
        """The prompt's tokens with their weights (1 but under ComfyUI's rules), before EOS."""
        if self.rules == "plain":
            return [(i, 1.0) for i in self.tokenizer.encode(prompt, add_special_tokens=False).ids]
        if self.rules == "comfyui":
            return [(i, w) for ids, w in _comfyui_groups(self.tokenizer, prompt) for i in ids]
        if len(prompt) > STABILITY_T5_CHARACTERS:
            logger.warning("T5 reads the first %d characters (Stability's rule); dropped the last %d of %d: %r",
                           STABILITY_T5_CHARACTERS, len(prompt) - STABILITY_T5_CHARACTERS, len(prompt), prompt[:60])
        return [(i, 1.0) for group in _word_by_word(self.tokenizer, prompt[:STABILITY_T5_CHARACTERS]) for i in group]

    def weighted(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt -> ids (1, n) int64 and weights (1, n) float32, the row `__call__` makes; each
        token has its segment's weight under ComfyUI's rules (1 under the others), EOS and padding 1."""
        return self._rows([prompt])

    def __call__(self, prompts: str | list[str]) -> torch.Tensor:
        """A prompt or a list of b prompts -> (b, n) int64 ids, each row the prompt's tokens, EOS, padding.

        Raises TextEncodingError when, untruncated, a prompt needs more than MAX_T5_TOKENS tokens."""
        return self._rows(_as_list(prompts))[0]

    def _rows(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for prompt in prompts:
            pairs = self._weighted_ids(prompt)
            if not self.truncate and len(pairs) + 1 > MAX_T5_TOKENS:
                raise TextEncodingError(
                    f"the prompt makes {len(pairs) + 1} T5 tokens, more than the {MAX_T5_TOKENS} this project "
                    f"bounds T5 to; shorten it: {prompt[:60]!r}"
                )
            if self.truncate and len(pairs) > self.max_length - 1:
                logger.warning(
                    "T5 length is %d; dropped the last %d of %d prompt tokens: %r",
                    self.max_length, len(pairs) - (self.max_length - 1), len(pairs), prompt[:60],
                )
                pairs = pairs[: self.max_length - 1]
            rows.append([*pairs, (self.eos_id, 1.0)])
        length = max(self.max_length, *(len(row) for row in rows))
        rows = [row + [(self.pad_id, 1.0)] * (length - len(row)) for row in rows]
        return (torch.tensor([[i for i, _ in row] for row in rows], dtype=torch.long),
                torch.tensor([[w for _, w in row] for row in rows], dtype=torch.float32))
