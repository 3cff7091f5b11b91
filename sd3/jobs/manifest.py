"""The manifest of an output folder: one JSON line per finished image, and what a resumed run may skip.

    {"index": 7, "file": "00007.png", "prompt": "...", "negative_prompt": "", "seed": 7,
     "settings": {...}, "sha256": "...", "seconds": 1.8, "batch_size": 1}

A line is appended, flushed and synced only after its image is on disk under its real name, so a
line always points at a whole file. One process appends to `manifest.jsonl`; under torchrun each
rank appends to its own `manifest.rank{R}.jsonl` and rank 0 merges them all into
`manifest.jsonl` (sorted by index) once every rank is done. A resumed run, whatever its number of
processes, reads every manifest file in the folder and skips an image whose line and file exist and
whose file's sha256 still matches.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sd3.errors import ConfigurationError
from sd3.checkpoint import sha256_file

MANIFEST = "manifest.jsonl"


def check_output_dir(folder: Path) -> None:
    """Create `folder` if needed and prove it writable, before any compute; raise if it cannot be."""
    if folder.exists() and not folder.is_dir():
        raise ConfigurationError(f"`output_dir` {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigurationError(f"`output_dir` {folder} cannot be written: {error.strerror or error}") from None


def part_name(rank: int, world: int) -> str:
    return MANIFEST if world == 1 else f"manifest.rank{rank}.jsonl"


def read_records(folder: Path) -> dict[int, dict]:
    """Every record of every manifest file in `folder`, by index (a later line wins; torn lines skipped)."""
    records = {}
    files = [folder / MANIFEST] + sorted(folder.glob("manifest.rank*.jsonl"))
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the last line of a run killed while writing it
                continue
            if isinstance(record, dict) and isinstance(record.get("index"), int):
                records[record["index"]] = record
    return records


def verified(folder: Path, record: dict) -> bool:
    """Whether the record's file exists and still has the bytes the record names."""
    path = folder / str(record.get("file", ""))
    return path.is_file() and sha256_file(path) == record.get("sha256")


class ManifestWriter:
    """Appends this process's records, each flushed and synced to disk before the next image starts."""

    def __init__(self, folder: Path, rank: int, world: int) -> None:
        self.path = folder / part_name(rank, world)
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb") as file:
                file.seek(-1, os.SEEK_END)
                torn = file.read(1) != b"\n"
            if torn:  # a line cut by a crash: end it, so the next record starts on its own line
                with open(self.path, "ab") as file:
                    file.write(b"\n")

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())


def merge(folder: Path) -> Path:
    """Fold every rank's part into `manifest.jsonl`, sorted by index, written atomically; parts removed."""
    records = read_records(folder)
    temporary = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        for index in sorted(records):
            file.write(json.dumps(records[index], ensure_ascii=False) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, folder / MANIFEST)
    for part in folder.glob("manifest.rank*.jsonl"):
        part.unlink()
    return folder / MANIFEST
