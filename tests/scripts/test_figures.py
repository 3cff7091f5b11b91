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
