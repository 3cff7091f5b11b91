"""Residency: which models stay loaded between generate() calls under each `keep` policy."""

import pytest
import torch

from sd3 import ConfigurationError, StableDiffusion3
from sd3.sampling import memory

ALL = {"clip_l", "clip_g", "t5", "mmdit", "vae"}
ARGS = dict(height=32, width=32, steps=2, cfg=4.0, seed=5, quiet=True)


def _pipeline(files, keep, loaded=None):
    on_load = (lambda name, module: loaded.append(name)) if loaded is not None else None
    return StableDiffusion3(files, keep=keep, on_load=on_load)


def test_keep_all_loads_each_model_once_and_reports_it_once(files):
    loaded = []
    pipe = _pipeline(files, "all", loaded)
    first = pipe.generate("a photo of a cat", **ARGS)
    second = pipe.generate("a photo of a cat", **ARGS)
    assert sorted(loaded) == sorted(ALL) and set(pipe.models.models) == ALL
    assert all(count == 1 for count in pipe.models.loads.values())
    assert second.timings["load"] == 0.0 and first.timings["load"] > 0.0
    assert torch.equal(first.latents, second.latents)  # a resident model computes what a fresh one does


def test_keep_stage_frees_every_stage_and_reloads_next_call(files):
    loaded = []
    pipe = _pipeline(files, "stage", loaded)
    staged = pipe.generate("a photo of a cat", **ARGS)
    assert pipe.models.models == {}
    pipe.generate("a photo of a cat", **ARGS)
    assert sorted(loaded) == sorted(list(ALL) * 2)  # on_load reports every actual load
    assert all(count == 2 for count in pipe.models.loads.values())
    resident = _pipeline(files, "all").generate("a photo of a cat", **ARGS)
    assert torch.equal(staged.latents, resident.latents)


def test_keep_auto_follows_the_memory_check(files, monkeypatch):
    pipe = _pipeline(files, "auto")
    total = sum(pipe.memory.weights.values())
    monkeypatch.setattr(memory, "available_bytes", lambda device: 100 * total)
    pipe.generate("a cat", **ARGS)
    assert set(pipe.models.models) == ALL  # everything fits together: resident
    pipe.unload()
    largest = max(pipe.memory.weights["mmdit"], sum(pipe.memory.weights[n] for n in ("clip_l", "clip_g", "t5")))
    monkeypatch.setattr(memory, "available_bytes", lambda device: largest + 2**20)  # one stage fits, not all
    pipe.generate("a cat", **ARGS)
    assert pipe.models.models == {} and pipe.models.loads["mmdit"] == 2  # staged: each stage freed


def test_unload_and_context_manager_free_everything(files):
    pipe = _pipeline(files, "all")
    pipe.generate("a cat", **ARGS)
    pipe.unload()
    assert pipe.models.models == {}
    with _pipeline(files, "all") as scoped:
        scoped.generate("a cat", **ARGS)
        assert set(scoped.models.models) == ALL
    assert scoped.models.models == {}


def test_a_pipeline_that_loads_releases_the_other_pipelines_models(files):
    first, second = _pipeline(files, "all"), _pipeline(files, "all")
    first.generate("a cat", **ARGS)
    second.generate("a cat", **ARGS)
    assert first.models.models == {} and set(second.models.models) == ALL


def test_unknown_keep_is_refused_before_anything_loads(files):
    with pytest.raises(ConfigurationError, match="unknown `keep` 'some'; choose one of auto, all, stage"):
        StableDiffusion3(files, keep="some")
