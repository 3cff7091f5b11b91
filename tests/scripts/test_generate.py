"""scripts/generate.py end to end on tiny local files: images, metadata, seeds, latents, errors.

Most runs call `main()` in this process (fast); the README's command itself runs as a subprocess.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from sd3.cli import generate
from sd3.testing.tiny.pipeline import write_tiny_sd3

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_sd3(tmp_path_factory.mktemp("sd3"), seed=3)


def local_flags(tiny) -> list[str]:
    c = str(tiny.checkpoint)
    return ["--checkpoint", c, "--clip-l", c, "--clip-g", c, "--t5xxl", c,
            "--clip-l-tokenizer", str(tiny.clip_l_tokenizer), "--clip-g-tokenizer", str(tiny.clip_g_tokenizer),
            "--t5-tokenizer", str(tiny.t5_tokenizer)]


def run(tiny, *flags, out=None) -> int:
    args = [*local_flags(tiny), "--height", "64", "--width", "48", "--num-inference-steps", "2", "--cpu", "--quiet", *flags]
    if out is not None:
        args += ["--final-image", str(out)]
    return generate.main(args)


def test_readme_command_with_local_files(tiny, tmp_path):
    """The README's main-job command, with the tiny local files in place of the Hub."""
    out = tmp_path / "out.png"
    command = [sys.executable, str(ROOT / "scripts" / "generate.py"), "--which", "3.5-medium", *local_flags(tiny),
               "--prompt", "a photo of a cat", "--height", "64", "--width", "64", "--num-inference-steps", "2",
               "--seed", "0", "--final-image", str(out), "--cpu"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 steps in" in done.stderr and "it/s" in done.stderr and "denoising:" in done.stderr
    image = Image.open(out)
    assert image.size == (64, 64) and image.format == "PNG"
    assert image.text["parameters"].startswith("a photo of a cat\nNegative prompt: \nSteps: 2, Sampler: euler, CFG scale: 4.0, Seed: 0, Size: 64x64, Model: 3.5-medium")
    assert json.loads(image.text["sd3"])["seed"] == 0


def test_same_seed_gives_identical_bytes(tiny, tmp_path):
    assert run(tiny, "--seed", "7", out=tmp_path / "a.png") == 0
    assert run(tiny, "--seed", "7", out=tmp_path / "b.png") == 0
    assert run(tiny, "--seed", "8", out=tmp_path / "c.png") == 0
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.png", "b.png", "c.png"))
    assert a == b and a != c


def test_latents_round_trip(tiny, tmp_path):
    assert run(tiny, "--seed", "3", "--save-latents", str(tmp_path / "final.safetensors"), out=tmp_path / "a.png") == 0
    noise = torch.randn(1, 16, 8, 6, generator=torch.Generator().manual_seed(3))
    save_file({"latents": noise}, str(tmp_path / "noise.safetensors"))
    assert run(tiny, "--latents", str(tmp_path / "noise.safetensors"), "--save-latents", str(tmp_path / "again.safetensors"),
               out=tmp_path / "b.png") == 0
    first, again = load_file(tmp_path / "final.safetensors")["latents"], load_file(tmp_path / "again.safetensors")["latents"]
    assert first.shape == (1, 16, 8, 6) and torch.equal(first, again)  # seed 3's noise is that draw
    pixels = lambda name: Image.open(tmp_path / name).tobytes()
    assert pixels("a.png") == pixels("b.png")  # the files differ only in the seed they record


def test_prompts_file_numbered_outputs_and_jpeg(tiny, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\n\nan astronaut riding a horse\n")
    assert run(tiny, "--prompts-file", str(prompts), "--num-images", "2", "--batch-size", "2", "--seed", "10",
               out=tmp_path / "pic.jpg") == 0
    made = sorted(p.name for p in tmp_path.glob("pic-*.jpg"))
    assert made == ["pic-0.jpg", "pic-1.jpg", "pic-2.jpg", "pic-3.jpg"]
    image = Image.open(tmp_path / "pic-3.jpg")
    assert image.format == "JPEG" and b"Seed: 13" in image.info["comment"] and b"an astronaut" in image.info["comment"]


def test_no_t5_and_reference_flags(tiny, tmp_path):
    assert run(tiny, "--no-t5", "--reference", "stability", "--sampler", "dpmpp_2m", "--seed", "1", out=tmp_path / "a.png") == 0
    assert run(tiny, "--reference", "candle", "--t5-max-length", "32", "--seed", "1", out=tmp_path / "b.png") == 0
    assert Image.open(tmp_path / "a.png").size == (48, 64)


def test_comfyui_flags(tiny, tmp_path):
    """--reference comfyui with ComfyUI's scheduler names and a zeroed negative; two images of one seed are
    rows 0 and 1 of one noise stream, and the PNG records the scheduler."""
    flags = ("--reference", "comfyui", "--scheduler", "sgm_uniform", "--negative-zero", "--seed", "5")
    assert run(tiny, *flags, "--num-images", "2", "--prompt", "a (red:1.3) cat", out=tmp_path / "a.png") == 0
    noise = torch.randn(2, 16, 8, 6, generator=torch.Generator().manual_seed(5))
    save_file({"latents": noise[1:]}, str(tmp_path / "row1.safetensors"))
    assert run(tiny, *flags, "--prompt", "a (red:1.3) cat", "--latents", str(tmp_path / "row1.safetensors"),
               out=tmp_path / "b.png") == 0
    assert Image.open(tmp_path / "a-1.png").tobytes() == Image.open(tmp_path / "b.png").tobytes()
    recorded = json.loads(Image.open(tmp_path / "a-0.png").text["sd3"])
    assert (recorded["scheduler"], recorded["negative_zero"], recorded["reference"]) == ("sgm_uniform", True, "comfyui")
    second = json.loads(Image.open(tmp_path / "a-1.png").text["sd3"])
    assert (second["seed"], second["batch_index"]) == (5, 1)  # ComfyUI's names: that seed's stream, row 1
    assert "Schedule type: sgm_uniform" in Image.open(tmp_path / "a-0.png").text["parameters"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-inference-steps", "1", "--scheduler", "kl_optimal"],
         "the kl_optimal scheduler needs at least 2 --num-inference-steps, got 1"),
        (["--height", "60"], "--height must be a positive multiple of 16, got 60"),
        (["--width", "256"], "width 256 exceeds this checkpoint's limit of 128 pixels"),
        (["--num-inference-steps", "0"], "--num-inference-steps must be at least 1"),
        (["--use-slg"], "--use-slg asks for the variant's skip-layer guidance, which variant 3-medium does not have"),
        pytest.param(["--use-flash-attn"], "--use-flash-attn needs a CUDA device",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")),
        (["--prompts-file", "/nonexistent/prompts.txt"], "--prompts-file /nonexistent/prompts.txt: file not found"),
        (["--lora", "/nonexistent/style.safetensors:0.8"], "--lora file not found: /nonexistent/style.safetensors"),
        (["--lora", "style.safetensors:abc"], "--lora takes PATH[:SCALE] with a number for SCALE, got 'style.safetensors:abc'"),
        (["--lora", "style.safetensors:nan"], "--lora's SCALE must be a finite number, got 'nan'"),
        (["--t5-max-length", "5000"], "--t5-max-length must be between 1 and 1024 tokens, got 5000"),
        (["--tile-size", "16"], "--tile-size must be at least 32"),
    ],
)
def test_errors_are_one_line_with_exit_1(tiny, tmp_path, capsys, flags, message):
    assert run(tiny, *flags, out=tmp_path / "x.png") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_missing_and_corrupt_files(tiny, tmp_path, capsys):
    flags = local_flags(tiny)
    flags[flags.index("--clip-g") + 1] = str(tmp_path / "missing.safetensors")
    assert generate.main([*flags, "--cpu", "--quiet", "--height", "32", "--width", "32"]) == 1
    err = capsys.readouterr().err
    assert "--clip-g" in err and "file not found" in err
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    flags = local_flags(tiny)
    flags[flags.index("--checkpoint") + 1] = str(corrupt)
    assert generate.main([*flags, "--cpu", "--quiet", "--height", "32", "--width", "32"]) == 1
    assert "not a readable safetensors file" in capsys.readouterr().err


def test_no_network_without_local_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert generate.main(["--which", "3.5-medium", "--cpu", "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the Hugging Face Hub" in err and "--checkpoint" in err


def test_nan_latents_name_the_likely_cause(tiny, tmp_path, capsys):
    save_file({"latents": torch.full((1, 16, 8, 6), float("nan"))}, str(tmp_path / "nan.safetensors"))
    assert run(tiny, "--latents", str(tmp_path / "nan.safetensors"), out=tmp_path / "x.png") == 1
    assert "NaN or inf" in capsys.readouterr().err


def test_verbose_shows_the_traceback(tiny, tmp_path):
    with pytest.raises(Exception, match="multiple of 16"):
        run(tiny, "--height", "60", "--verbose", out=tmp_path / "x.png")


def test_installed_command_runs_generate_and_lists_its_subcommands(tiny, tmp_path):
    """`sd3 generate` (the console script) is the same command as scripts/generate.py."""
    sd3 = Path(sys.executable).with_name("sd3")
    listing = subprocess.run([str(sd3), "--help"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and all(name in listing.stdout for name in ("generate", "audit", "benchmark"))
    out = tmp_path / "cat.png"
    done = subprocess.run([str(sd3), "generate", "--which", "3.5-medium", *local_flags(tiny), "--prompt", "a cat",
                           "--height", "32", "--width", "32", "--num-inference-steps", "1", "--seed", "0",
                           "--final-image", str(out), "--cpu", "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (32, 32)
    unknown = subprocess.run([str(sd3), "paint"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "unknown command 'paint'" in unknown.stderr


def test_memory_advice_is_given_in_flags(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sd3.sampling.memory.available_bytes", lambda device: 1024)
    assert run(tiny, out=tmp_path / "x.png") == 1
    err = capsys.readouterr().err
    assert "text encoding stage needs about" in err and "--dtype bfloat16" in err and "--no-t5" in err and "--cpu" in err
    assert "`" not in err


@pytest.mark.parametrize("flags, message", [
    (["--cfg-scale", "nan"], "--cfg-scale must be a finite number, got nan"),
    (["--time-shift", "inf"], "--time-shift must be a finite number, got inf"),
    (["--tile-size", "4"], "--tile-size must be at least 32 (twice the 16 latent pixels that tiles overlap), got 4"),
])
def test_bad_numbers_fail_before_any_file_is_read(tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.setattr("sd3.sampling.hub.hf_hub_download", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    assert generate.main(["--cpu", "--quiet", "--final-image", str(tmp_path / "x.png"), *flags]) == 1
    assert message in capsys.readouterr().err


def test_image_to_image_and_inpainting_flags(tiny, tmp_path):
    import numpy as np

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    mask = np.zeros((40, 56), dtype=np.uint8)
    mask[10:30, 10:40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert run(tiny, "--init-image", str(tmp_path / "in.png"), "--denoise", "0.5", "--seed", "2",
               out=tmp_path / "a.png") == 0
    assert run(tiny, "--init-image", str(tmp_path / "in.png"), "--strength", "0.5", "--mask", str(tmp_path / "mask.png"),
               "--seed", "2", out=tmp_path / "b.png") == 0
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert a.size == (48, 64)  # resized to --width x --height
    recorded = json.loads(b.text["sd3"])
    assert (recorded["strength"], recorded["init_image"], recorded["mask"]) == (0.5, "in.png", "mask.png")
    assert "Denoising strength: 0.5, Init image: in.png, Mask: mask.png" in b.text["parameters"]
    assert json.loads(a.text["sd3"])["steps"] == 1  # 2 steps at strength 0.5: diffusers' rule runs the last one


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--init-image", "/no/such.png"], "--init-image /no/such.png: file not found"),
        (["--init-image", "BROKEN"], "is not a readable image"),
        (["--init-image", "IMG", "--strength", "1.5"], "--strength must be in (0, 1], got 1.5"),
        (["--init-image", "IMG", "--denoise", "0"], "--strength must be in (0, 1], got 0.0"),
        (["--mask", "MASK"], "a --mask needs an --init-image"),
        (["--init-image", "IMG", "--mask", "SMALL"], "the --mask is (8, 8) pixels but the --init-image is (56, 40)"),
    ],
)
def test_bad_edit_inputs_fail_before_any_file_is_read(tmp_path, capsys, monkeypatch, flags, message):
    Image.new("RGB", (56, 40)).save(tmp_path / "img.png")
    Image.new("L", (56, 40)).save(tmp_path / "mask.png")
    Image.new("L", (8, 8)).save(tmp_path / "small.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    names = {"IMG": "img.png", "MASK": "mask.png", "SMALL": "small.png", "BROKEN": "broken.png"}
    flags = [str(tmp_path / names[f]) if f in names else f for f in flags]
    monkeypatch.setattr("sd3.sampling.hub.hf_hub_download", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    assert generate.main(["--cpu", "--quiet", "--final-image", str(tmp_path / "x.png"), *flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x.png").exists()


def test_previews_and_the_taesd3_decoder(tiny, tmp_path, capsys):
    from sd3.testing.tiny.taesd import taesd_state_dict

    taesd = tmp_path / "taesd3.safetensors"
    save_file(taesd_state_dict(seed=1), str(taesd))
    frames = tmp_path / "frames"
    assert run(tiny, "--preview", "proj", "--preview-path", f"{frames}/", "--num-images", "2", "--seed", "4",
               out=tmp_path / "a.png") == 0
    assert sorted(p.name for p in frames.iterdir()) == ["00000-001.png", "00000-002.png", "00001-001.png",
                                                         "00001-002.png"]
    assert run(tiny, "--preview", "taesd", "--taesd", str(taesd), "--preview-interval", "2",
               "--preview-path", str(tmp_path / "live.png"), "--vae-decoder", "taesd3", out=tmp_path / "b.png") == 0
    assert Image.open(tmp_path / "live.png").size == (48, 64)
    assert json.loads(Image.open(tmp_path / "b.png").text["sd3"])["decoder"] == "taesd3"
    assert "decoder" not in json.loads(Image.open(tmp_path / "a-0.png").text["sd3"])  # the VAE: as before
    capsys.readouterr()
    for flags, message in ((["--preview", "taesd"], "a taesd preview needs a TAESD3 file: give --taesd"),
                           (["--vae-decoder", "taesd3"], "--vae-decoder taesd3 needs a TAESD3 file: give --taesd"),
                           (["--preview", "proj", "--preview-interval", "0"], "--preview-interval must be at least 1, got 0")):
        assert run(tiny, *flags, out=tmp_path / "c.png") == 1
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {message}"


def test_previews_in_an_output_dir_job(tiny, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\nan astronaut riding a horse\n")
    frames = tmp_path / "frames"
    assert run(tiny, "--prompts-file", str(prompts), "--output-dir", str(tmp_path / "out"), "--preview", "proj",
               "--preview-path", f"{frames}/", "--preview-interval", "2") == 0
    assert sorted(p.name for p in frames.iterdir()) == ["00000-002.png", "00001-002.png"]  # one set per image


def test_preview_flags_need_preview(tiny, tmp_path, capsys):
    for flags in (["--preview-path", str(tmp_path / "x.png")], ["--preview-interval", "2"]):
        assert run(tiny, *flags, out=tmp_path / "a.png") == 1
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {flags[0]} needs --preview proj, taesd or vae"
    assert not (tmp_path / "a.png").exists()
