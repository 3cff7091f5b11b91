"""The scripts that draw docs/images run and write real pictures."""

import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _run(*args):
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr


def test_block_diagrams(tmp_path):
    _run("scripts/draw_diagrams.py", "--out-dir", str(tmp_path))
    for name in ("mmdit_block.png", "mmditx_block.png"):
        image = Image.open(tmp_path / name)
        assert image.size[0] > 1000 and image.size[1] > 1000
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 50  # drawn, not blank


def test_strength_plot(tmp_path):
    _run("scripts/plot_strength.py", "--out", str(tmp_path / "strength.png"))
    image = Image.open(tmp_path / "strength.png")
    assert image.size[0] > 1000 and len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 50


def test_schedule_plot(tmp_path):
    _run("scripts/plot_schedules.py", "--out", str(tmp_path / "sigmas.png"))
    assert Image.open(tmp_path / "sigmas.png").size == (1320, 495)


def test_trajectory_filmstrip_and_comparison(tmp_path):
    """On tiny files: one row of x0 frames (one per step), then with --compare two rows and their difference."""
    from sd3.testing.tiny.pipeline import write_tiny_sd3

    tiny = write_tiny_sd3(tmp_path / "sd3", seed=2)
    c = str(tiny.checkpoint)
    files = ["--checkpoint", c, "--clip-l", c, "--clip-g", c, "--t5xxl", c, "--clip-l-tokenizer",
             str(tiny.clip_l_tokenizer), "--clip-g-tokenizer", str(tiny.clip_g_tokenizer), "--t5-tokenizer",
             str(tiny.t5_tokenizer), "--height", "64", "--width", "64", "--num-inference-steps", "4", "--cfg-scale", "4",
             "--cpu", "--quiet"]
    _run("scripts/trajectory.py", *files, "--final-image", str(tmp_path / "one.png"))
    _run("scripts/trajectory.py", *files, "--compare", "cfg=1", "--final-image", str(tmp_path / "two.png"))
    one, two = Image.open(tmp_path / "one.png"), Image.open(tmp_path / "two.png")
    assert one.size == (96 + 4 * 128, 128 + 18) and two.size == (96 + 4 * 128, 3 * 128 + 18)
    difference = two.crop((96, 2 * 128, 96 + 4 * 128, 3 * 128)).convert("L")
    assert difference.getextrema()[1] > 0  # cfg 1 and 4 part ways
    first_column = two.crop((96, 2 * 128, 96 + 128, 3 * 128)).convert("L")
    assert first_column.getextrema()[1] > 0  # already at the first step: the velocity differs


def test_trajectory_refuses_flags_it_does_not_use(tmp_path):
    for flags, message in ((["--lora", "style.safetensors"], "does not use --lora"),
                           (["--num-images", "3"], "does not use --num-images"),
                           (["--compare", "slg=yes"], "--compare slg takes on or off, got 'yes'")):
        done = subprocess.run([sys.executable, "scripts/trajectory.py", "--cpu", *flags], capture_output=True,
                              text=True, cwd=ROOT, timeout=300)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
