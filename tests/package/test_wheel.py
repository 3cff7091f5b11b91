"""The built wheel installs one top-level package, `sd3`, so it lives beside packages that own `clip` or `mmdit`.

Builds the wheel, installs it with torch into a fresh virtualenv beside `clip-anytorch` (which
installs a top-level `clip`; `--no-deps`, since only which package owns the name matters), then
checks there that `clip` is theirs, that every file of ours is under `sd3/`, and that the installed
`sd3 generate` runs on tiny local files. Needs pip to reach the package index, as the install does.
"""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import importlib.metadata as metadata, importlib.util, json, sysconfig
from pathlib import Path
site = Path(sysconfig.get_paths()["purelib"])
theirs = [str(f) for f in metadata.distribution("clip-anytorch").files]
ours = [str(f) for f in metadata.distribution("sd3-from-scratch").files]
import sd3, sd3.clip, sd3.mmdit
print(json.dumps({
    "clip_origin": str(Path(importlib.util.find_spec("clip").origin).relative_to(site)),
    "theirs": theirs, "ours": ours,
    "sd3_clip": str(Path(sd3.clip.__file__).relative_to(site)),
    "sd3_mmdit": str(Path(sd3.mmdit.__file__).relative_to(site)),
}))
"""


def _run(*command, cwd=None) -> str:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd, timeout=1200)
    assert done.returncode == 0, f"{command[:4]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_wheel_beside_clip_anytorch(tiny, tmp_path):
    # Built from a copy: setuptools' build/ folder keeps files of earlier builds that a wheel could pick up.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", ".venv*", "__pycache__"))
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "wheels", source)
    (wheel,) = (tmp_path / "wheels").glob("sd3_from_scratch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert all(n.startswith(("sd3/", "sd3_from_scratch-")) for n in names), [n for n in names if "/" not in n][:5]
    for package in ("sd3/mmdit/", "sd3/clip/", "sd3/vae/", "sd3/sampling/", "sd3/cli/", "sd3/jobs/", "sd3/testing/tiny/"):
        assert f"{package}__init__.py" in names

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python, command = venv / "bin" / "python", venv / "bin" / "sd3"
    _run(python, "-m", "pip", "install", "-q", "torch==2.13.0", wheel)
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "clip-anytorch")

    found = json.loads(_run(python, "-c", CHECK, cwd=tmp_path).strip().splitlines()[-1])
    assert found["clip_origin"] == "clip/__init__.py" and "clip/__init__.py" in found["theirs"]
    assert found["sd3_clip"] == "sd3/clip/__init__.py" and found["sd3_mmdit"] == "sd3/mmdit/__init__.py"
    stray = [f for f in found["ours"] if not f.startswith(("sd3/", "sd3_from_scratch-")) and not f.endswith("bin/sd3")]
    assert stray == []

    c, out = str(tiny.checkpoint), tmp_path / "cat.png"
    _run(command, "generate", "--checkpoint", c, "--clip-l", c, "--clip-g", c, "--t5xxl", c,
         "--clip-l-tokenizer", tiny.clip_l_tokenizer, "--clip-g-tokenizer", tiny.clip_g_tokenizer,
         "--t5-tokenizer", tiny.t5_tokenizer, "--height", "32", "--width", "48", "--num-inference-steps", "2",
         "--seed", "1", "--final-image", out, "--cpu", "--quiet", cwd=tmp_path)
    assert Image.open(out).size == (48, 32)
