"""What watching the flow costs: step previews on a 256² step, and TAESD3 against the VAE.

    sd3 benchmark --only previews      # SD3.5-medium's random real-size files, ours alone

- Previews: one pipeline with every model resident generates the same image with no callback and
  with `Preview("proj", every=1)`, in turn, three times each; the denoising seconds per step (the
  lifecycle's own timing, loads excluded) are compared as medians.
- TAESD3: the real-size VAE decoder and a real-size TAESD3 decoder (random weights: the timing does
  not depend on their values) decode the same latent at 512² and 1024², after one warm-up each;
  medians of three.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from sd3.sampling.previews import Preview

_PROMPT = "a photo of a red fox in the snow"


def preview_plan(quick: bool, tiny: bool) -> list[dict]:
    variant, (res, large) = ("tiny", (32, (64, 128))) if tiny else ("3.5-medium", (256, (512, 1024)))
    specs = [{"task": "previews", "variant": variant, "dtype": "bfloat16", "res": res, "steps": 2 if quick else 4}]
    return specs + [{"task": "tiny_decoder", "variant": variant, "dtype": "bfloat16", "res": r} for r in large]


def taesd_file(cache: Path) -> Path:
    """A real-size TAESD3 with random weights, written once beside the cached checkpoints."""
    from sd3.testing.tiny.taesd import taesd_state_dict

    path = Path(cache) / "taesd3-random.safetensors"
    if not path.exists():
        save_file(taesd_state_dict(seed=0), str(path))
    return path


def measure_previews(spec: dict, files, cache: Path) -> dict:
    if spec["task"] == "previews":
        return _previews(spec, files)
    return _tiny_decoder(spec, files, cache)


def _previews(spec: dict, files) -> dict:
    from sd3.sampling import StableDiffusion3

    pipe = StableDiffusion3(files, dtype=spec["dtype"], keep="all", device="cpu")
    settings = dict(height=spec["res"], width=spec["res"], steps=spec["steps"], cfg=4.0, seed=0, quiet=True)
    pipe.generate(_PROMPT, **{**settings, "steps": 1})  # loads every model
    plain, previewed = [], []
    for _ in range(3):
        plain.append(pipe.generate(_PROMPT, **settings).timings["denoise"] / spec["steps"])
        previewed.append(pipe.generate(_PROMPT, on_step=Preview("proj"), **settings).timings["denoise"] / spec["steps"])
    return {"step_s": statistics.median(plain), "step_with_preview_s": statistics.median(previewed)}


def _tiny_decoder(spec: dict, files, cache: Path) -> dict:
    from sd3.vae import decode_latents, load_taesd, load_vae

    dtype, side = getattr(torch, spec["dtype"]), spec["res"] // 8
    latents = torch.randn(1, 16, side, side, generator=torch.Generator().manual_seed(0))
    decoders = {"vae": (load_vae(files.vae, dtype=dtype), decode_latents),
                "taesd": (load_taesd(taesd_file(cache), dtype=dtype), lambda model, z: model.decode(z))}
    seconds = {}
    with torch.no_grad():
        for name, (model, decode) in decoders.items():
            decode(model, latents)  # warm-up
            times = []
            for _ in range(3):
                start = time.perf_counter()
                decode(model, latents)
                times.append(time.perf_counter() - start)
            seconds[f"{name}_s"] = statistics.median(times)
    return seconds


def previews_table(results: list[dict]) -> str:
    lines = ["step previews and TAESD3 (ours alone)"]
    for r in results:
        if r["task"] == "previews":
            lines.append(f"  {r['variant']} {r['dtype']} {r['res']}², {r['steps']} steps: {r['step_s']:.3f} s/step, "
                         f"{r['step_with_preview_s']:.3f} with a proj preview every step "
                         f"({100 * (r['step_with_preview_s'] / r['step_s'] - 1):+.1f} %)")
        else:
            lines.append(f"  decode one {r['res']}² image, {r['dtype']}: VAE {r['vae_s']:.3f} s, TAESD3 "
                         f"{r['taesd_s']:.3f} s, VAE / TAESD3 {r['vae_s'] / r['taesd_s']:.1f}")
    return "\n".join(lines)
