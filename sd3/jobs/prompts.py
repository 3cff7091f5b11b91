"""Prompt lists for evaluation suites: plain text (one prompt per line) or JSONL with per-line overrides.

    a photo of a cat
    {"prompt": "a red cube on a blue sphere", "negative_prompt": "blurry", "seed": 7, "cfg": 5.0}

A line's position among the prompts (blank lines skipped) is its global index: it names the image
(`00007.png`) and, unless the line gives its own `seed`, sets the seed (the run's seed + index), so
any image can be made again alone, in any chunk, batch, resumed run or process.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from sd3.errors import ConfigurationError
from sd3.sampling.requests import PromptItem

# JSONL keys a line may set, with their types; everything else on a line is an error.
OVERRIDES = {"negative_prompt": str, "seed": int, "height": int, "width": int, "steps": int, "cfg": float,
             "shift": float}


def read_prompt_file(path: str | Path) -> list[PromptItem]:
    """Every prompt of a plain-text or JSONL file (JSONL: the file ends in .jsonl or its first line is `{`).

    Raises:
        ConfigurationError: the file is missing, not UTF-8, holds no prompt, or a JSONL line is
            not an object with a string `prompt` and known, well-typed overrides (its line number given).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"`prompts_file` {path}: file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ConfigurationError(
            f"`prompts_file` {path} is not UTF-8 text (byte {error.start}); save it as UTF-8"
        ) from None
    numbered = [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise ConfigurationError(f"`prompts_file` {path} holds no prompt")
    jsonl = path.suffix.lower() == ".jsonl" or numbered[0][1].startswith("{")
    items = []
    for index, (number, line) in enumerate(numbered):
        items.append(_json_item(index, line, f"`prompts_file` {path} line {number}") if jsonl else PromptItem(index, line))
    return items


def _json_item(index: int, line: str, where: str) -> PromptItem:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"{where} is not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise ConfigurationError(f'{where} needs a JSON object with a string "prompt"')
    unknown = sorted(set(record) - set(OVERRIDES) - {"prompt"})
    if unknown:
        raise ConfigurationError(f"{where} has unknown keys {unknown}; a line may set prompt, {', '.join(OVERRIDES)}")
    overrides = {}
    for key, kind in OVERRIDES.items():
        if key in record:
            value = record[key]
            ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
            if not ok or isinstance(value, bool) or (kind is float and not math.isfinite(value)):
                raise ConfigurationError(f"{where}: {key} must be a finite {kind.__name__}, got {value!r}")
            overrides[key] = float(value) if kind is float else value
    return PromptItem(index, record["prompt"], overrides)
