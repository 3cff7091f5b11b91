"""stable-diffusion.cpp side by side with ours, on the same files (`sd3 benchmark --only peers`).

    pip install -e ".[bench]"     # builds stable-diffusion-cpp-python from source (~10 minutes on 2 cores)
    sd3 benchmark --only peers    # or --sd-cli PATH, a stable-diffusion.cpp `sd` binary

Both run the audit's random real-size SD3.5-medium weights (the MMDiT and VAE from one bfloat16
file, CLIP-L and CLIP-G beside it) without T5: stable-diffusion.cpp needs all 24 of T5's layers,
and the cache holds 2. Ours loads the MMDiT from a bfloat16, Q8_0 or Q4_0 file (sd3/quant's
writers); stable-diffusion.cpp converts the bfloat16 file at load (`wtype`, its `--type`). One
image per run, Euler, cfg 4, the same thread count on both sides, each run in a fresh process:

- the step: (time for 4 steps − time for 1 step) / 3, so loading and encoding cancel out, after a
  discarded 1-step run that warms torch's compile cache (ours) and the page cache (both);
- the whole command: a fresh process that loads everything and makes one 4-step image;
- the peak RSS of that process.

stable-diffusion.cpp runs the conditional and unconditional passes one after the other, ours as
one batch of two; that difference is part of what is measured.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORMATS = ("bfloat16", "Q8_0", "Q4_0")
WTYPES = {"bfloat16": "bf16", "Q8_0": "q8_0", "Q4_0": "q4_0"}
_PROMPT = "a photo of a red fox in the snow"
STEPS = (1, 4)


def peers_plan(quick: bool) -> list[dict]:
    """SD3.5-medium's real-size files (stable-diffusion.cpp cannot load the tiny architecture)."""
    return [{"task": "peers", "variant": "3.5-medium", "format": f, "res": res, "impl": impl}
            for res in ((256,) if quick else (256, 512)) for f in FORMATS for impl in ("ours", "sd.cpp")]


def peer_available(sd_cli: str | None) -> str | None:
    """None when stable-diffusion.cpp can run here, else the one-line reason it cannot."""
    if sd_cli:
        return None if Path(sd_cli).is_file() else f"--sd-cli {sd_cli}: no such file"
    if importlib.util.find_spec("stable_diffusion_cpp") is None:
        return "stable-diffusion.cpp is not installed (pip install -e \".[bench]\", or --sd-cli PATH): peers skipped"
    return None


def run_peer(spec: dict, files, quant_paths: dict, threads: int, sd_cli: str | None) -> dict:
    """One (format, size, implementation): the step from two image runs, the whole command and its peak RSS."""
    times, rss = {}, 0
    for steps in (STEPS[0], *STEPS):  # a discarded first run: torch's compile cache and the page cache warm for both
        times.pop(steps, None)
        command = _command(spec, files, quant_paths, threads, sd_cli, steps)
        with tempfile.TemporaryFile() as errors:
            begin = time.perf_counter()
            child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors,
                                     env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage
            times[steps] = time.perf_counter() - begin
            child.returncode = os.waitstatus_to_exitcode(status)
            if child.returncode:
                errors.seek(0)
                raise RuntimeError(f"{spec['impl']} {spec['format']} failed:\n{errors.read()[-2000:].decode(errors='replace')}")
        rss = usage.ru_maxrss * 1024  # Linux: KiB; the 4-step run's, kept
    return {**spec, "threads": threads, "step_s": (times[STEPS[1]] - times[STEPS[0]]) / (STEPS[1] - STEPS[0]),
            "command_s": times[STEPS[1]], "peak_rss_bytes": rss}


def _command(spec, files, quant_paths, threads, sd_cli, steps) -> list[str]:
    res, out = spec["res"], str(Path(quant_paths["bfloat16"]).parent / f"peer-{spec['impl']}.png")
    if spec["impl"] == "ours":
        checkpoint = quant_paths[spec["format"]]
        return [sys.executable, "-m", "sd3.cli", "generate", "--cpu", "--quiet", "--which", "3.5-medium", "--no-t5",
                "--checkpoint", str(checkpoint), "--vae", str(files.vae), "--clip-l", str(files.clip_l),
                "--clip-g", str(files.clip_g), "--clip-l-tokenizer", str(files.clip_l_tokenizer),
                "--clip-g-tokenizer", str(files.clip_g_tokenizer), "--t5-tokenizer", str(files.t5_tokenizer),
                "--dtype", "bfloat16", "--height", str(res), "--width", str(res), "--num-inference-steps", str(steps),
                "--cfg-scale", "4", "--seed", "0", "--prompt", _PROMPT, "--final-image", out]
    settings = dict(model=str(files.checkpoint), clip_l=str(files.clip_l), clip_g=str(files.clip_g),
                    wtype=WTYPES[spec["format"]], threads=threads, res=res, steps=steps, prompt=_PROMPT, out=out)
    if sd_cli:
        return [sd_cli, "-m", settings["model"], "--clip_l", settings["clip_l"], "--clip_g", settings["clip_g"],
                "--type", settings["wtype"], "-t", str(threads), "-H", str(res), "-W", str(res), "--steps", str(steps),
                "--cfg-scale", "4", "--sampling-method", "euler", "-s", "0", "-p", _PROMPT, "-o", out]
    return [sys.executable, "-c", _PYTHON_PEER, json.dumps(settings)]


# stable-diffusion-cpp-python's API, in a fresh interpreter.
_PYTHON_PEER = """
import json, sys
from stable_diffusion_cpp import StableDiffusion
s = json.loads(sys.argv[1])
sd = StableDiffusion(model_path=s["model"], clip_l_path=s["clip_l"], clip_g_path=s["clip_g"], wtype=s["wtype"],
                     n_threads=s["threads"], verbose=False)
sd.generate_image(prompt=s["prompt"], width=s["res"], height=s["res"], cfg_scale=4.0, sample_steps=s["steps"],
                  sample_method="euler", seed=0)[0].save(s["out"])
"""


def peers_table(results: list[dict]) -> str:
    gib = 2**30
    lines = [f"{'format':<10} {'size':>5} {'threads':>7} {'step ours':>10} {'step sd.cpp':>12} {'ratio':>6} "
             f"{'command ours':>13} {'command sd.cpp':>15} {'ratio':>6} {'RSS ours':>9} {'RSS sd.cpp':>11} {'ratio':>6}"]
    for fmt in FORMATS:
        for res in sorted({r["res"] for r in results}):
            pair = {r["impl"]: r for r in results if r["format"] == fmt and r["res"] == res}
            if len(pair) < 2:
                continue
            o, t = pair["ours"], pair["sd.cpp"]
            lines.append(f"{fmt:<10} {res:>5} {o['threads']:>7} {o['step_s']:>9.2f}s {t['step_s']:>11.2f}s "
                         f"{o['step_s'] / t['step_s']:>6.2f} {o['command_s']:>12.1f}s {t['command_s']:>14.1f}s "
                         f"{o['command_s'] / t['command_s']:>6.2f} {o['peak_rss_bytes'] / gib:>8.2f}G "
                         f"{t['peak_rss_bytes'] / gib:>10.2f}G {o['peak_rss_bytes'] / t['peak_rss_bytes']:>6.2f}")
    return "\n".join(lines)
