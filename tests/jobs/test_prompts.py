"""Prompt files: plain text or JSONL with per-line overrides, and errors that name the line."""

import pytest

from sd3 import ConfigurationError
from sd3.jobs import read_prompt_file


def test_plain_text_skips_blank_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\n\n  a dog  \n", encoding="utf-8")
    items = read_prompt_file(path)
    assert [(i.index, i.prompt, i.overrides) for i in items] == [(0, "a cat", {}), (1, "a dog", {})]


def test_jsonl_lines_carry_their_overrides(tmp_path):
    path = tmp_path / "suite.jsonl"
    path.write_text('{"prompt": "a red cube", "seed": 7, "cfg": 5, "negative_prompt": "blurry"}\n'
                    '\n{"prompt": "two cats", "height": 64}\n', encoding="utf-8")
    items = read_prompt_file(path)
    assert items[0].overrides == {"seed": 7, "cfg": 5.0, "negative_prompt": "blurry"}
    assert items[1].index == 1 and items[1].overrides == {"height": 64}


@pytest.mark.parametrize(
    "content, message",
    [
        (b"a cat\n\xff\xfe broken\n", "is not UTF-8 text"),
        (b'{"prompt": "a cat"}\n{"prompt": "a dog"\n', "line 2 is not valid JSON"),
        (b'{"prompt": "a cat"}\n\n{"text": "a dog"}\n', 'line 3 needs a JSON object with a string "prompt"'),
        (b'{"prompt": "a cat", "guidance": 3}\n', "line 1 has unknown keys ['guidance']"),
        (b'{"prompt": "a cat", "cfg": NaN}\n', "line 1: cfg must be a finite float"),
        (b'{"prompt": "a cat", "seed": 1.5}\n', "line 1: seed must be a finite int"),
        (b"\n\n", "holds no prompt"),
    ],
)
def test_bad_files_are_refused_with_the_line(tmp_path, content, message):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(content)
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_prompt_file(path)
