"""`sd3 generate --controlnet PATH[:SCALE] --control-image PATH` on tiny files in both layouts, the
control-map preprocessing, the records, a prompt-file job, and the one-line refusals before any load."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sd3.cli import generate
from sd3.sampling.control_maps import blur, canny
from sd3.testing.tiny.controlnet import diffusers_controlnet, stability_controlnet
from tests.scripts.test_generate import local_flags


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_control")
    save_file(stability_controlnet(tiny.mmdit, 1, control_type=1), str(folder / "canny.safetensors"))
    save_file(diffusers_controlnet(tiny.mmdit, 1), str(folder / "instantx.safetensors"))
    pixels = (torch.rand(64, 48, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()
    Image.fromarray(pixels).save(folder / "photo.png")
    return folder


def _run(tiny, *flags) -> int:
    return generate.main([*local_flags(tiny), "--height", "64", "--width", "48", "--cpu", "--quiet", *flags])


def test_both_layouts_run_and_are_recorded(tiny, setup, tmp_path):
    assert _run(tiny, "--controlnet", f"{setup / 'canny.safetensors'}:0.8", "--control-image", str(setup / "photo.png"),
                "--canny", "50,150", "--num-inference-steps", "2", "--final-image", str(tmp_path / "a.png")) == 0
    record = json.loads(Image.open(tmp_path / "a.png").info["sd3"])
    from sd3.checkpoint import sha256_file

    assert record["controlnets"] == [{"file": "canny.safetensors", "sha256": sha256_file(setup / "canny.safetensors"),
                                      "image": "photo.png", "image_sha256": sha256_file(setup / "photo.png"),
                                      "scale": 0.8, "start": 0.0, "end": 1.0, "preprocessing": "canny 50,150"}]
    assert "ControlNet 0: \"Model: canny.safetensors [" in Image.open(tmp_path / "a.png").info["parameters"]
    assert (record["steps"], record["cfg"]) == (2, 3.5)  # Stability's cfg where none was given; steps as given
    assert _run(tiny, "--controlnet", str(setup / "instantx.safetensors"), "--control-image", str(setup / "photo.png"),
                "--num-inference-steps", "2", "--control-end", "0.5", "--final-image", str(tmp_path / "b.png")) == 0
    plain = tmp_path / "plain.png"
    assert _run(tiny, "--num-inference-steps", "2", "--final-image", str(plain)) == 0
    assert Image.open(tmp_path / "b.png").tobytes() != Image.open(plain).tobytes()


def test_a_prompt_file_job_with_a_controlnet_resumes(tiny, setup, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    flags = ["--controlnet", str(setup / "instantx.safetensors"), "--control-image", str(setup / "photo.png"),
             "--num-inference-steps", "2", "--seed", "1", "--prompts-file", str(prompts), "--output-dir", str(tmp_path / "out")]
    assert _run(tiny, *flags) == 0
    lines = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["settings"]["controlnets"][0]["file"] == "instantx.safetensors"
    assert _run(tiny, *flags) == 0  # the same job again: everything is already done
    changed = tmp_path / "photo.png"  # the same name with other pixels: a resumed job must notice
    Image.open(setup / "photo.png").rotate(180).save(changed)
    flags[flags.index(str(setup / "photo.png"))] = str(changed)
    assert _run(tiny, *flags) == 1


@pytest.mark.parametrize("flags, message", [
    (["--controlnet", "X"], "give one --control-image per --controlnet: got 0 for 1"),
    (["--control-image", "photo.png"], "--control-image needs --controlnet"),
    (["--control-mask", "photo.png"], "--control-mask needs --controlnet"),
    (["--controlnet", "canny.safetensors", "--control-image", "photo.png", "--control-mask", "photo.png"],
     "--controlnet canny.safetensors takes no --control-mask"),
    (["--controlnet", "canny.safetensors", "--control-image", "missing.png"], "--control-image missing.png: file not found"),
    (["--controlnet", "canny.safetensors", "--control-image", "photo.png", "--control-start", "0.6", "--control-end", "0.6"],
     "--control-start must be below --control-end"),
    (["--controlnet", "canny.safetensors:x", "--control-image", "photo.png"], "--controlnet takes PATH[:SCALE]"),
    (["--controlnet", "canny.safetensors", "--control-image", "photo.png", "--canny", "9"], "--canny takes LOW,HIGH"),
    (["--controlnet", "canny.safetensors", "--control-image", "photo.png", "--blur", "-1"], "--blur radius must be at least 0"),
])
def test_bad_flags_are_one_line_errors(tiny, setup, tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.chdir(setup)
    assert _run(tiny, *flags, "--final-image", str(tmp_path / "x.png")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1] and "Traceback" not in "\n".join(err)


def test_a_controlnet_for_another_width_is_refused_before_loading(tiny, setup, tmp_path, capsys):
    narrow = tmp_path / "narrow.safetensors"
    save_file(stability_controlnet(tiny.mmdit.__class__(depth=2, heads=1), 1), str(narrow))
    assert _run(tiny, "--controlnet", str(narrow), "--control-image", str(setup / "photo.png"),
                "--final-image", str(tmp_path / "x.png")) == 1
    assert "it was trained for another model" in capsys.readouterr().err


def test_control_maps():
    image = Image.new("RGB", (32, 32), "black")
    image.paste((255, 255, 255), (8, 8, 24, 24))  # a white square: edges along its border
    edges = np.asarray(canny(image, 50, 150))
    assert edges.shape == (32, 32, 3) and set(np.unique(edges)) == {0, 255}
    assert edges[16, 16].max() == 0 and edges[8:25, 8:25].max() == 255  # inside is flat; the border is an edge
    soft = np.asarray(blur(image, 2))
    assert 0 < soft[8, 16, 0] < 255 and soft[16, 16, 0] == 255 and soft[0, 0, 0] == 0
