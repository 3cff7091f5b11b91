"""One process's share of a generation job: skip what is finished, stream the rest, save as it comes.

    job = Job(folder, image_requests(lines, seed=0), settings=..., generation=..., batch_size=1)
    job.run(pipe)              # writes 00000.png ... and manifest.jsonl, resumable

Images are named by their global index (`00007.png`) and written atomically; after each one is on
disk its manifest line is appended and synced (manifest.py). Run the same job again and it skips
every image whose line and file verify; an image cut short by a crash has no line, so it is made
again. A record whose prompt, seed or settings differ from this run's is refused, unless
`overwrite` says to make those images again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sd3.errors import ConfigurationError
from sd3.jobs.distributed import Rank
from sd3.jobs.images import image_parameters, recorded_seed, save_image
from sd3.jobs.manifest import ManifestWriter, check_output_dir, merge, read_records, verified
from sd3.sampling.requests import ImageRequest, settings_key
from sd3.sampling.checks import request_options
from sd3.sampling.stream import StreamStats

COMPARED = ("prompt", "negative_prompt", "seed", "batch_index", "settings")  # what must match for a record to count as done


@dataclass
class JobSummary:
    written: int = 0
    skipped: int = 0
    seconds: float = 0.0
    stats: StreamStats = field(default_factory=StreamStats)
    manifest: Path | None = None


@dataclass
class Job:
    """Image requests rendered into `folder` (one image per request, named by its index).

    Args:
        requests: from `sd3.sampling.image_requests` (prompt, negative prompt, seed, own settings).
        settings: what every manifest line records besides the image's own (variant, dtype,
            reference, ...); the image's height, width, steps, cfg, shift, sampler and SLG come
            from the stream.
        generation: `generate_many` keyword arguments (height, width, steps, cfg, ...).
    """

    folder: Path
    requests: list[ImageRequest]
    settings: dict
    generation: dict
    batch_size: int = 1
    chunk_size: int | None = None
    overwrite: bool = False
    rank: Rank = field(default_factory=Rank)
    extension: str = ".png"
    on_step: Callable | None = None  # after every denoising step, as for `generate_many` (a `Preview`, say)
    control: list = field(default_factory=list)  # ControlInputs for every image, as for `generate_many`

    def expected(self, pipe, request: ImageRequest, described: dict) -> dict:
        """The record fields this run would write for `request` (compared against an earlier run's).

        `described` caches the settings per distinct line override, so a resume resolves each once."""
        key = settings_key(request)
        if key not in described:
            opts = request_options(pipe, request, {**self.generation, "batch_size": self.batch_size})
            described[key] = {**self.settings, **opts.describe()}
        return {"prompt": request.prompt, "negative_prompt": request.negative_prompt, "batch_index": None,
                **recorded_seed(request, pipe.reference.noise == "batch"), "settings": described[key]}

    def run(self, pipe, *, quiet: bool = False) -> JobSummary:
        """Make this rank's unfinished images; rank 0 merges the manifests once every rank is done."""
        check_output_dir(self.folder)
        started, summary = time.perf_counter(), JobSummary()
        mine = [request for request in self.requests if self.rank.owns(request.index, self.batch_size)]
        records = read_records(self.folder)
        done, described = set(), {}
        for request in mine:
            record = records.get(request.index)
            if record is None or not verified(self.folder, record):
                continue
            want = self.expected(pipe, request, described)
            changed = [k for k in COMPARED if record.get(k) != want[k]]
            if changed and not self.overwrite:
                was, now = record, want
                if changed[0] == "settings":  # name the setting itself
                    was, now = record.get("settings") or {}, want["settings"]
                    changed = [k for k in sorted({*was, *now}) if was.get(k) != now.get(k)]
                raise ConfigurationError(
                    f"`output_dir` {self.folder} holds image {request.index} made with a different {changed[0]} "
                    f"({was.get(changed[0])!r}, now {now.get(changed[0])!r}); use another folder, or "
                    "`overwrite=True` to make such images again"
                )
            if not changed:
                done.add(request.index)
        # A batch with any image left is computed whole, so that its images match an uninterrupted run.
        open_batches = {request.index // self.batch_size for request in mine if request.index not in done}
        remaining = [request for request in mine if request.index // self.batch_size in open_batches]
        summary.skipped = len(done)
        writer = ManifestWriter(self.folder, self.rank.rank, self.rank.world)
        if remaining:
            stream = pipe.generate_many(remaining, batch_size=self.batch_size, chunk_size=self.chunk_size,
                                        stats=summary.stats, quiet=quiet, on_step=self.on_step, control=self.control,
                                        **self.generation)
            for result in stream:
                if result.index in done:
                    continue
                name = f"{result.index:05d}{self.extension}"
                settings = {**self.settings, **result.settings}
                batch_noise = pipe.reference.noise == "batch"
                digest = save_image(result.image, self.folder / name, {**image_parameters(result, settings, batch_noise),
                                                                       "index": result.index})
                writer.append({"index": result.index, "file": name, "prompt": result.prompt,
                               "negative_prompt": result.negative_prompt, **recorded_seed(result, batch_noise),
                               "settings": settings,
                               "sha256": digest, "seconds": round(result.seconds, 4), "batch_size": self.batch_size})
                summary.written += 1
        self.rank.barrier()
        if self.rank.rank == 0:
            summary.manifest = merge(self.folder)
        summary.seconds = time.perf_counter() - started
        return summary

