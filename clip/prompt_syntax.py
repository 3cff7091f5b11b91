"""Prompt weight syntax, `(word:1.5)`, as Stability's reference code reads it before tokenizing.

Stability's `other_impls.py` (Stability-AI/sd3.5, `SDTokenizer.tokenize_with_weights`, taken from
ComfyUI's `sd1_clip.py`) parses the A1111-style syntax:
- `(text)` multiplies the weight of `text` by 1.1, and groups nest: `((text))` is 1.21;
- `(text:1.5)` sets it to 1.5, where the part after the last colon parses as a float; otherwise the
  colon stays text and the group is still ×1.1;
- `\\(` and `\\)` are literal brackets; any other backslash is text;
- brackets that do not pair stay text, as its scanner leaves them: an unclosed `(` keeps the rest of
  the prompt as text, and after a stray `)` the bracket count stays one too low to the end.

Stability then drops the weights (`encode_token_weights` keeps only the ids), so under
`--reference stability` the syntax only removes brackets; the weights are returned here for the
readers that apply them. After parsing, the text is split into words on spaces (a newline counts as
a space) and each word is tokenized on its own (docs/reference.md §6).
"""

from __future__ import annotations

# Escaped brackets are hidden behind these two-character codes while the brackets are parsed,
# as Stability's `escape_important` does, and restored in every segment afterwards.
_ESCAPES = {"\\)": "\0\1", "\\(": "\0\2"}


def weighted_segments(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """`text` -> [(segment, weight), ...] in order; the segments are plain text, brackets resolved.

    "a (red:1.5) ((cat))" -> [("a ", 1.0), ("red", 1.5), (" ", 1.0), ("cat", 1.21)] (1.1²).
    """
    for escaped, code in _ESCAPES.items():
        text = text.replace(escaped, code)
    segments = _weigh(text, weight)
    for escaped, code in _ESCAPES.items():
        segments = [(s.replace(code, escaped[1]), w) for s, w in segments]
    return segments


def words(text: str) -> list[str]:
    """The words of a prompt, weight syntax removed: every segment split on spaces and newlines."""
    return [word for segment, _ in weighted_segments(text) for word in segment.replace("\n", " ").split(" ") if word]


def _weigh(text: str, weight: float) -> list[tuple[str, float]]:
    out = []
    for piece in _top_level_pieces(text):
        if len(piece) < 2 or piece[0] != "(" or piece[-1] != ")":
            out.append((piece, weight))
            continue
        inner, inner_weight = piece[1:-1], weight * 1.1
        colon = inner.rfind(":")
        if colon > 0:  # a leading colon is text: "(:1.5)" is the text ":1.5" at ×1.1
            try:
                inner, inner_weight = inner[:colon], float(inner[colon + 1 :])
            except ValueError:
                pass
        out += _weigh(inner, inner_weight)
    return out


def _top_level_pieces(text: str) -> list[str]:
    """Split `text` into plain runs and outermost bracket groups, tracking the bracket depth.

    A group opens only at depth 0 and closes when the depth returns to 0. A `)` at depth 0 takes the
    depth below zero and stays text, and so does every bracket until the depth climbs back to 0.
    """
    pieces, current, depth = [], "", 0
    for char in text:
        if char == "(" and depth == 0:
            if current:
                pieces.append(current)
            current, depth = "(", 1
        elif char == "(":
            current, depth = current + char, depth + 1
        elif char == ")":
            depth -= 1
            current += char
            if depth == 0:
                pieces.append(current)
                current = ""
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces
