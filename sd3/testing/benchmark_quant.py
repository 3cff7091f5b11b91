"""Low-precision MMDiT files at real size: memory, step time, and agreement with the bfloat16 model.

    sd3 benchmark --only quant        # SD3.5-medium's random real-size MMDiT in bf16, fp8, scaled fp8, Q8_0, Q4_0

The audit's bfloat16 SD3.5-medium file is quantised once by sd3/quant/writer.py (cached next to it).
Each format then runs in a fresh process: the MMDiT alone is loaded (bfloat16 compute) and timed
over denoising steps at 256² with CFG (batch 2, 154 context tokens), its peak RSS read after the
load and after the steps; then the whole pipeline generates one image from the same noise, so the
final latents and the decoded image can be compared with the bfloat16 model's.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

FORMATS = ("bfloat16", "fp8", "fp8 scaled", "Q8_0", "Q4_0")
_PROMPT = "a photo of a red fox in the snow"


def quant_files(files, cache: Path) -> dict[str, Path]:
    """Each format's MMDiT file, written once from the bfloat16 checkpoint (the VAE stays in it for fp8)."""
    from sd3.quant.writer import write_fp8, write_gguf

    folder = Path(cache) / "quant"
    folder.mkdir(exist_ok=True)
    paths = {"bfloat16": Path(files.checkpoint)}
    for name, write in (
        ("fp8", lambda p: write_fp8(files.checkpoint, p)),
        ("fp8 scaled", lambda p: write_fp8(files.checkpoint, p, scaling="scale_weight")),
        ("Q8_0", lambda p: write_gguf(files.checkpoint, p, "Q8_0")),
        ("Q4_0", lambda p: write_gguf(files.checkpoint, p, "Q4_0")),
    ):
        path = folder / f"mmdit-{name.replace(' ', '-')}.{'gguf' if name.startswith('Q') else 'safetensors'}"
        paths[name] = path if path.exists() else write(path)
    return paths


def measure_quant(spec: dict, files, cache: Path) -> dict:
    """One format in this (fresh) process: load, steps, then one image; latents and pixels saved for comparison."""
    from sd3 import load_mmdit
    from sd3.quant import state_bytes
    from sd3.sampling import StableDiffusion3
    from sd3.testing.benchmark_workers import peak_rss_bytes

    path = quant_files(files, cache)[spec["format"]]
    dtype, res, steps = torch.bfloat16, spec["res"], spec["steps"]
    start = time.perf_counter()
    model = load_mmdit(path, dtype=dtype)
    load_s, rss_loaded = time.perf_counter() - start, peak_rss_bytes()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, res // 8, res // 8, generator=g, dtype=dtype)
    y = torch.randn(2, model.config.adm_in_channels, generator=g, dtype=dtype)
    context = torch.randn(2, 154, model.config.context_dim, generator=g, dtype=dtype)
    t = torch.tensor([800.0, 800.0])
    times = []
    with torch.inference_mode():
        for _ in range(steps + 1):  # the first is a warm-up
            begin = time.perf_counter()
            model(x, t, y, context)
            times.append(time.perf_counter() - begin)
    out = {"file_bytes": path.stat().st_size, "state_bytes": state_bytes(model), "load_s": load_s,
           "rss_loaded_bytes": rss_loaded, "rss_steps_bytes": peak_rss_bytes(), "step_s": statistics.median(times[1:])}
    del model
    if not spec.get("image", True):
        return out
    noise = torch.randn(1, 16, res // 8, res // 8, generator=torch.Generator().manual_seed(1))
    pipe = StableDiffusion3(dataclasses.replace(files, checkpoint=path), dtype=dtype,
                            device="cpu", keep="stage")
    result = pipe.generate([_PROMPT], height=res, width=res, steps=spec["steps"], cfg=4.0, latents=noise, quiet=True)
    sample = Path(cache) / "quant" / f"sample-{spec['format'].replace(' ', '-')}.npz"
    np.savez(sample, latents=result.latents.float().numpy(), image=np.asarray(result.images[0]))
    return {**out, "sample": str(sample)}


def agreement(results: list[dict]) -> list[dict]:
    """Each format against bfloat16: max |Δ| of the final latents, PSNR of the decoded 8-bit images."""
    reference = np.load(next(r for r in results if r["format"] == "bfloat16" and "sample" in r)["sample"])
    for r in (r for r in results if "sample" in r):
        sample = np.load(r["sample"])
        r["max_abs_latents"] = float(np.abs(sample["latents"] - reference["latents"]).max())
        mse = float(np.mean((sample["image"].astype(np.float64) - reference["image"].astype(np.float64)) ** 2))
        r["psnr_db"] = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    return results


def quant_table(results: list[dict]) -> str:
    gib = 2**30
    base = {r["res"]: r for r in results if r["format"] == "bfloat16"}
    lines = [f"{'MMDiT file (bfloat16 compute)':<20} {'size':>5} {'file':>8} {'weights':>8} {'RSS load':>9} "
             f"{'RSS steps':>10} {'step':>7} {'vs bf16':>8} {'max|Δ| latents':>15} {'PSNR':>9}"]
    for r in results:
        psnr = "—" if "psnr_db" not in r else "identical" if math.isinf(r["psnr_db"]) else f"{r['psnr_db']:.1f} dB"
        delta = f"{r['max_abs_latents']:>15.4f}" if "max_abs_latents" in r else f"{'—':>15}"
        lines.append(f"{r['format']:<20} {r['res']:>5} {r['file_bytes'] / gib:>7.2f}G {r['state_bytes'] / gib:>7.2f}G "
                     f"{r['rss_loaded_bytes'] / gib:>8.2f}G {r['rss_steps_bytes'] / gib:>9.2f}G {r['step_s']:>6.2f}s "
                     f"{r['step_s'] / base[r['res']]['step_s']:>7.2f}× {delta} {psnr:>9}")
    return "\n".join(lines)
