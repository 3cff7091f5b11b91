"""The public stages: encode, denoise and decode compose into generate(); conditioning saved and reused."""

import pytest
import torch

from sd3 import Conditioning, ConfigurationError, StableDiffusion3
from sd3.sampling import initial_noise

ARGS = dict(height=32, width=48, steps=2, cfg=4.0, quiet=True)
PROMPTS = ["a photo of a cat", "an astronaut riding a horse", "a red chair"]
NEGATIVES = ["blurry", "", "low quality"]


def _loading(files, keep="all"):
    loaded = []
    return StableDiffusion3(files, keep=keep, on_load=lambda name, module: loaded.append(name)), loaded


def _bytes(result) -> list[bytes]:
    return [image.tobytes() for image in result.images]


@pytest.mark.parametrize("keep", ["all", "stage"])
def test_saved_conditioning_gives_the_bytes_of_the_prompts_and_loads_no_text_encoder(files, tmp_path, keep):
    pipe, loaded = _loading(files, keep)
    settings = dict(seed=3, num_images=2, batch_size=2, **ARGS)  # 6 images in 3 batches
    from_text = pipe.generate(PROMPTS, NEGATIVES, **settings)
    pipe.encode(PROMPTS, NEGATIVES).save(tmp_path / "conditioning.safetensors")
    pipe.unload()
    loaded.clear()
    saved = Conditioning.load(tmp_path / "conditioning.safetensors")
    from_saved = pipe.generate(conditioning=saved, **settings)
    assert _bytes(from_saved) == _bytes(from_text) and from_saved.seeds == from_text.seeds
    assert sorted(loaded) == ["mmdit", "vae"]  # the text encoders never loaded
    assert from_saved.timings["encode"] == 0.0


def test_the_stages_one_by_one_give_generates_bytes(files):
    pipe = StableDiffusion3(files, keep="all")
    result = pipe.generate(PROMPTS[:2], NEGATIVES[:2], seed=5, batch_size=2, **ARGS)
    conditioning = pipe.encode(PROMPTS[:2], NEGATIVES[:2])
    assert conditioning.context.shape[0] == 2 and conditioning.y.shape == (2, 320)  # the tiny model's widths
    options = pipe.options(batch_size=2, **{k: v for k, v in ARGS.items() if k != "quiet"})
    latents = pipe.denoise(conditioning, initial_noise([5, 6], 16, 4, 6), options)
    assert torch.equal(latents, result.latents)
    assert [image.tobytes() for image in pipe.decode(latents, batch_size=2)] == _bytes(result)


def test_stages_build_no_autograd_graph(files, init_image_tensor):
    """The test suite runs with autograd on: a stage that forgot `no_grad` would build a graph."""
    modes = []

    def on_load(name, module):
        for part in module.modules():  # every submodule: the VAE, say, runs its decoder, not its own forward
            part.register_forward_pre_hook(lambda m, args: modes.append((name, torch.is_grad_enabled())))

    pipe = StableDiffusion3(files, keep="all", on_load=on_load)
    assert torch.is_grad_enabled()
    conditioning = pipe.encode(["a cat"])
    x0, noise = pipe.encode_image(init_image_tensor, [1], height=32, width=48)
    latents = pipe.denoise(conditioning, noise, pipe.options(**{k: v for k, v in ARGS.items() if k != "quiet"}))
    pipe.decode(latents)
    assert all(p.requires_grad for p in pipe.models.models["mmdit"].parameters())  # a graph could be built
    assert {name for name, _ in modes} == {"clip_l", "clip_g", "t5", "mmdit", "vae"}
    assert [name for name, grad in modes if grad] == []  # every model ran without autograd
    for tensor in (conditioning.context, conditioning.y, x0, latents):
        assert tensor.grad_fn is None and not tensor.requires_grad


@pytest.fixture
def init_image_tensor():
    return torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))


def test_conditioning_files_are_checked(files, tmp_path):
    pipe, loaded = _loading(files)
    torch.manual_seed(0)
    wide = Conditioning(torch.randn(1, 9, 4096), torch.randn(1, 2048), torch.randn(1, 9, 4096), torch.randn(1, 2048))
    with pytest.raises(ConfigurationError, match="context width 4096 and pooled width 2048; this MMDiT takes 384 and 320"):
        pipe.generate(conditioning=wide, **ARGS)
    fits = Conditioning(torch.randn(2, 9, 384), torch.randn(2, 320), torch.randn(2, 9, 384), torch.randn(2, 320))
    with pytest.raises(ConfigurationError, match="2 rows for 3 `prompts`"):
        pipe.generate(["a", "b", "c"], conditioning=fits, **ARGS)
    with pytest.raises(ConfigurationError, match="`negative_prompts` are inside the `conditioning`"):
        pipe.generate(conditioning=fits, negative_prompts="blurry", **ARGS)
    with pytest.raises(ConfigurationError, match="context \\(n, l, d\\), y \\(n, p\\)"):
        Conditioning(torch.randn(2, 9, 384), torch.randn(3, 320), torch.randn(2, 9, 384), torch.randn(3, 320))
    from safetensors.torch import save_file

    save_file({"context": torch.zeros(1, 2, 3)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ConfigurationError, match="lacks y, negative_context, negative_y"):
        Conditioning.load(tmp_path / "partial.safetensors")
    assert loaded == []


@pytest.mark.parametrize("keep", ["all", "stage"])
@pytest.mark.parametrize("masked", [False, True])
def test_generate_many_does_image_to_image_as_generate_does(files, init_image_tensor, masked, keep):
    pipe = StableDiffusion3(files, keep=keep)
    mask = torch.zeros(32, 48)
    mask[8:24, 12:36] = 1  # white: repaint
    edit = dict(init_image=init_image_tensor, strength=0.5, mask=mask if masked else None)
    called = pipe.generate(PROMPTS[:2], seed=4, batch_size=2, **edit, **ARGS)  # one batch: the same text pass
    streamed = list(pipe.generate_many(PROMPTS[:2], seed=4, batch_size=2, **edit, **ARGS))
    assert [r.image.tobytes() for r in streamed] == _bytes(called) and called.steps == 1  # half of 2 steps
    plain = pipe.generate(PROMPTS[:2], seed=4, batch_size=2, **ARGS)
    assert _bytes(plain) != _bytes(called)  # the image did set the start


def test_generate_many_takes_generates_counts_and_refuses_what_it_does_not_know(files):
    pipe = StableDiffusion3(files, keep="all")
    results = list(pipe.generate_many("a cat", num_images=3, seed=2, **ARGS))  # one string is one prompt
    assert [(r.index, r.seed, r.prompt) for r in results] == [(0, 2, "a cat"), (1, 3, "a cat"), (2, 4, "a cat")]
    assert [r.image.tobytes() for r in results] == _bytes(pipe.generate("a cat", num_images=3, seed=2, **ARGS))
    with pytest.raises(ConfigurationError, match=r"unknown settings \['negative_prompts'\]"):
        next(pipe.generate_many(["a cat"], negative_prompts=["blurry"], **ARGS))


def test_timings_add_up_to_no_more_than_the_call(files):
    import time

    pipe = StableDiffusion3(files, keep="stage")
    start = time.perf_counter()
    result = pipe.generate(PROMPTS, seed=1, batch_size=2, **ARGS)
    wall = time.perf_counter() - start
    assert all(seconds > 0 for seconds in result.timings.values())
    assert sum(result.timings.values()) <= wall


@pytest.mark.parametrize("keep, resident", [("stage", set()), ("all", {"clip_l", "clip_g", "t5"})])
def test_a_stage_alone_is_a_call_and_a_hold_loads_once_for_many(files, keep, resident):
    pipe = StableDiffusion3(files, keep=keep)
    pipe.encode("a cat")
    assert set(pipe.models.models) == resident
    with pipe.lifecycle.hold("encode"):
        first, second = pipe.encode("a cat"), pipe.encode("a dog")
        assert {"clip_l", "clip_g", "t5"} <= set(pipe.models.models)
    assert set(pipe.models.models) == resident
    assert pipe.models.loads["clip_l"] == (2 if keep == "stage" else 1)  # once for the hold, not per encode
    assert torch.equal(first.context, pipe.encode("a cat").context) and not torch.equal(first.y, second.y)


def test_a_paused_stream_and_a_call_between_keep_their_own_decisions(files):
    """generate() while a staged stream waits between images: its own timings and residency, and the
    stream then finishes with the bytes of an uninterrupted run."""
    pipe = StableDiffusion3(files, keep="stage")
    whole = [r.image.tobytes() for r in pipe.generate_many(PROMPTS, chunk_size=3, **ARGS)]
    stream = pipe.generate_many(PROMPTS, chunk_size=3, **ARGS)
    first = next(stream)  # the VAE is held for the rest of the chunk
    alone = pipe.generate("a red chair", seed=9, **ARGS)
    assert pipe.models.models == {}  # staged: the call freed what it loaded, and what the stream held
    assert alone.timings["load"] > 0 and alone.timings["encode"] > 0
    assert [first.image.tobytes()] + [r.image.tobytes() for r in stream] == whole
