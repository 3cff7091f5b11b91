"""Variants by name: files from the Hub cache or the caller, defaults from the variant, the README example."""

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sd3
from sd3 import ConfigurationError, ModelLoadingError, StableDiffusion3
from sd3.sampling import VARIANTS
from sd3.sampling.variants import TOKENIZERS
from sd3.testing.tiny.pipeline import write_tiny_sd3

ROOT = Path(__file__).resolve().parents[2]
REVISION = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, tiny, which: str) -> Path:
    """A Hugging Face Hub cache (repo folders, refs/main, snapshots) holding `which`'s files as tiny ones."""
    v = VARIANTS[which]
    entries = [(f, tiny.checkpoint) for f in (v.checkpoint, v.clip_l, v.clip_g, v.t5xxl)]
    entries += [(TOKENIZERS["clip_l"], tiny.clip_l_tokenizer), (TOKENIZERS["clip_g"], tiny.clip_g_tokenizer),
                (TOKENIZERS["t5"], tiny.t5_tokenizer)]
    for hub_file, source in entries:
        repo = root / ("models--" + hub_file.repo.replace("/", "--"))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(REVISION)
        target = repo / "snapshots" / REVISION / hub_file.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(source)
    return root


@pytest.fixture(scope="module")
def big_tiny(tmp_path_factory):
    """A tiny SD3 whose position table reaches 1024 pixels, the variants' default size."""
    return write_tiny_sd3(tmp_path_factory.mktemp("sd3"), seed=5, pos_embed_max_size=64)


def test_readme_python_example_runs_as_written(big_tiny, tmp_path):
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(import sd3\n.*?)```", readme, re.S).group(1)
    assert len(example.strip().splitlines()) <= 4  # "about three lines"
    cache = hub_cache(tmp_path / "hub", big_tiny, "3.5-medium")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    from PIL import Image

    assert Image.open(tmp_path / "cat.png").size == (1024, 1024)


def test_readme_stages_example_runs_as_written(big_tiny, tmp_path):
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(import sd3\nfrom sd3.sampling import initial_noise\n.*?)```", readme, re.S).group(1)
    cache = hub_cache(tmp_path / "hub", big_tiny, "3.5-medium")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    from PIL import Image

    # the same seed, conditioning and settings: the stages one by one give generate()'s bytes
    one_by_one, again = Image.open(tmp_path / "cat.png"), Image.open(tmp_path / "cat-again.png")
    assert one_by_one.size == (512, 512) and one_by_one.tobytes() == again.tobytes()


def test_variant_defaults_drive_generate(tiny, tmp_path, monkeypatch):
    cache = hub_cache(tmp_path / "hub", tiny, "3.5-large-turbo")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    steps = []
    pipe = StableDiffusion3.from_variant("3.5-large-turbo", cache_dir=str(cache))
    result = pipe.generate("a cat", height=32, width=32, on_step=lambda i, n, x: steps.append(n), quiet=True)
    assert result.steps == 4 and steps == [4, 4, 4, 4]  # turbo: 4 steps at cfg 1, not 28 at cfg 4
    assert pipe.variant.cfg == 1.0 and pipe.files.checkpoint.name == "sd3.5_large_turbo.safetensors"
    with pytest.raises(ConfigurationError, match="`slg=True`.*3.5-large-turbo does not have"):
        pipe.generate("a cat", height=32, width=32, slg=True)


def test_files_override_the_hub_and_t5_can_be_left_out(tiny, tmp_path):
    c = str(tiny.checkpoint)
    files = {"checkpoint": c, "clip_l_tokenizer": tiny.clip_l_tokenizer, "clip_g_tokenizer": tiny.clip_g_tokenizer,
             "t5xxl": None}
    pipe = StableDiffusion3.from_variant("3-medium", files=files)  # all-in-one: the checkpoint serves the encoders
    assert pipe.files.clip_g == tiny.checkpoint and pipe.files.t5xxl is None and pipe.files.t5_tokenizer is None
    loaded = []
    pipe.models.on_load = lambda name, module: loaded.append(name)
    pipe.generate("a cat", height=32, width=32, steps=1, quiet=True)
    assert "t5" not in loaded


def test_step_count_comes_from_the_schedule(files):
    steps = []
    result = StableDiffusion3(files).generate("a cat", height=32, width=32, cfg=4.0, sigmas=[1.0, 0.5, 0.0],
                                              on_step=lambda i, n, x: steps.append(i), quiet=True)
    assert result.steps == 2 and steps == [1, 2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(which="4-huge"), "unknown variant `which`='4-huge'"),
        (dict(which="3.5-medium", keep="never"), "unknown `keep` 'never'"),
        (dict(which="3.5-medium", reference="comfy"), "unknown `reference` 'comfy'"),
        (dict(which="3.5-medium", dtype="int8"), "unknown `dtype` 'int8'"),
        (dict(which="3.5-medium", files={"unet": "x"}), "unknown `files` entries \\['unet'\\]"),
        (dict(which="3.5-medium", files={"checkpoint": None}), "only t5xxl and t5_tokenizer may be"),
    ],
)
def test_bad_arguments_are_refused_before_any_download(kwargs, message, monkeypatch):
    def no_download(*args, **kw):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr("sd3.sampling.hub.hf_hub_download", no_download)
    which = kwargs.pop("which")
    with pytest.raises(sd3.SD3Error, match=message):
        StableDiffusion3.from_variant(which, **kwargs)


def test_missing_local_file_names_its_files_entry(tmp_path):
    with pytest.raises(ModelLoadingError, match=r'`files\["vae"\]` .*vae.safetensors: file not found'):
        StableDiffusion3.from_variant("3.5-medium", files={"checkpoint": __file__, "vae": tmp_path / "vae.safetensors"})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cfg=float("nan")), "`cfg` must be a finite number"),
        (dict(shift=float("inf")), "`shift` must be a finite number"),
        (dict(height=40), "`height` must be a positive multiple of 16"),
        (dict(batch_size=0), "`batch_size` must be at least 1"),
        (dict(sampler_name="ddim"), "unknown `sampler_name` 'ddim'"),
        (dict(steps=None), "no variant to take defaults from: give `steps`"),
        (dict(cfg=None), "no variant to take defaults from: give `cfg`"),
    ],
)
def test_generate_checks_its_arguments_before_loading(files, kwargs, message):
    pipe = StableDiffusion3(files)
    with pytest.raises(ConfigurationError, match=message):
        pipe.generate("a cat", **{"height": 32, "width": 32, "steps": 1, "cfg": 4.0, **kwargs})
    assert pipe.models.loads == {}


def test_public_api_from_the_top_level():
    for name in ("StableDiffusion3", "load_mmdit", "load_clip_l", "load_clip_g", "load_t5", "load_vae", "SD3Error",
                 "ModelLoadingError", "ConfigurationError", "DeviceError"):
        assert hasattr(sd3, name), name
    parameters = list(inspect.signature(StableDiffusion3.from_variant).parameters)
    assert parameters[:10] == ["which", "files", "device", "dtype", "keep", "reference", "revision", "cache_dir",
                               "on_load", "compile"]
    generate = inspect.signature(StableDiffusion3.generate).parameters
    assert list(generate)[1:3] == ["prompts", "negative_prompts"]
    assert all(generate[k].kind is inspect.Parameter.KEYWORD_ONLY for k in ("height", "width", "steps", "cfg", "seed"))
