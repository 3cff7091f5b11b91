"""Generation at eval scale: prompt files, streaming with atomic saves and a manifest, resume, and
sharding across processes started by `torchrun`.

Files: `prompts.py` (plain-text and JSONL prompt lists), `manifest.py` (atomic image writes, the
manifest, what a resumed run may skip), `distributed.py` (rank and world size from torchrun's
environment), `run.py` (one process's share of a job, end to end).
"""

from sd3.jobs.prompts import PromptItem, read_prompt_file

__all__ = ["PromptItem", "read_prompt_file"]
