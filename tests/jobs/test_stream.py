"""generate_many: images handed back as they are made, the same bytes however the list is cut up."""

import numpy as np
import pytest

from sd3 import ConfigurationError, StableDiffusion3
from sd3.sampling import PromptItem, StreamStats

PROMPTS = ["a photo of a cat", "an astronaut riding a horse", "a cute robot", "oil painting of mountains", "blurry",
           "high quality", "a red chair"]
ARGS = dict(height=32, width=48, steps=2, cfg=4.0, quiet=True)


@pytest.fixture(scope="module")
def pipe(files):
    return StableDiffusion3(files, keep="all")


def _bytes(results) -> dict[int, bytes]:
    return {r.index: r.image.tobytes() for r in results}


@pytest.mark.parametrize("batch_size", [1, 3])
def test_same_bytes_whatever_the_chunks_the_resume_point_or_the_shard(pipe, batch_size):
    items = [PromptItem(i, p) for i, p in enumerate(PROMPTS)]
    whole = _bytes(pipe.generate_many(items, batch_size=batch_size, **ARGS))
    assert sorted(whole) == list(range(len(PROMPTS)))
    assert _bytes(pipe.generate_many(items, batch_size=batch_size, chunk_size=2 * batch_size, **ARGS)) == whole
    shards = {}
    for rank in range(2):  # what two torchrun ranks compute: batch j goes to rank j % 2
        mine = [item for item in items if (item.index // batch_size) % 2 == rank]
        shards.update(_bytes(pipe.generate_many(mine, batch_size=batch_size, **ARGS)))
    assert shards == whole
    resumed = [item for item in items if item.index // batch_size >= 1]  # the first batch was done before a crash
    assert _bytes(pipe.generate_many(resumed, batch_size=batch_size, **ARGS)) == {i: whole[i] for i in
                                                                                    (it.index for it in resumed)}


def test_a_different_batch_size_changes_only_float_rounding(pipe):
    one = {r.index: np.asarray(r.image, dtype=int) for r in pipe.generate_many(PROMPTS, batch_size=1, **ARGS)}
    three = {r.index: np.asarray(r.image, dtype=int) for r in pipe.generate_many(PROMPTS, batch_size=3, **ARGS)}
    assert max(np.abs(one[i] - three[i]).max() for i in one) <= 2  # pixel levels out of 255


def test_matches_generate_for_the_same_seed(pipe):
    streamed = next(iter(pipe.generate_many(["a photo of a cat"], seed=9, **ARGS)))
    called = pipe.generate("a photo of a cat", seed=9, **ARGS)
    assert streamed.seed == 9 and streamed.image.tobytes() == called.images[0].tobytes()


def test_results_come_back_before_the_list_is_done(files):
    pipe = StableDiffusion3(files, keep="all")
    stream = pipe.generate_many(PROMPTS, **ARGS)
    first = next(stream)
    stats_after_first = pipe.models.loads["vae"]
    assert first.index == 0 and stats_after_first == 1  # decoded and handed back...
    rest = list(stream)  # ...while six prompts were still waiting
    assert [r.index for r in rest] == list(range(1, len(PROMPTS)))


def test_per_line_overrides_and_seeds(pipe):
    items = [PromptItem(0, "a cat", {"seed": 100, "cfg": 2.0}), PromptItem(1, "a dog", {"negative_prompt": "blurry"})]
    a, b = pipe.generate_many(items, seed=5, **ARGS)
    assert (a.seed, a.settings["cfg"], a.negative_prompt) == (100, 2.0, "")
    assert (b.seed, b.settings["cfg"], b.negative_prompt) == (6, 4.0, "blurry")  # seed + global index


def test_staged_chunks_grow_until_loading_is_a_tenth(files):
    pipe, stats = StableDiffusion3(files, keep="stage"), StreamStats()
    results = list(pipe.generate_many(PROMPTS * 4, stats=stats, **ARGS))
    assert len(results) == 28 and stats.chunk_sizes[0] == 4 and len(stats.chunk_sizes) < 28
    assert pipe.models.loads["mmdit"] == stats.chunks  # one load per chunk, not per image
    assert 0 < stats.load_share < 1


def test_settings_are_checked_before_anything_loads(files):
    pipe = StableDiffusion3(files, keep="all")
    with pytest.raises(ConfigurationError, match="`cfg` must be a finite number"):
        next(pipe.generate_many([PromptItem(0, "a cat"), PromptItem(1, "a dog", {"cfg": float("inf")})], **ARGS))
    assert pipe.models.loads == {}


def test_auto_batch_size_follows_the_memory_check(files, monkeypatch):
    from sd3.sampling import memory

    pipe = StableDiffusion3(files, keep="stage")
    options = pipe.options(height=32, width=48, steps=2, cfg=4.0, shift=None, seed=0, num_images=1, batch_size=1,
                           slg=None, sampler_name="euler", sigmas=None, tile_size=None)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**40)
    assert pipe.auto_batch_size(options, cap=8) == 8
    one = pipe.memory.activations(options, pipe.lifecycle.context_tokens)
    room = max(pipe.memory.weights["mmdit"] + one["mmdit"], pipe.memory.weights["vae"] + one["vae"])
    monkeypatch.setattr(memory, "available_bytes", lambda device: room)  # exactly one image's worth
    assert pipe.auto_batch_size(options, cap=8) == 1
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)  # unknown: do not guess
    assert pipe.auto_batch_size(options, cap=8) == 1
