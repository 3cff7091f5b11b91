"""Parity audit: our implementation and diffusers side by side, module by module, on the same weights.

    sd3 audit                       # random weights at SD3.5-medium's real size (cached)
    sd3 audit --reference candle    # also: how far Candle's choices move the result
    sd3 audit --checkpoint sd3.5_medium.safetensors --clip-l ... # real weights
    python scripts/audit.py ...     # the same

For every module with a counterpart (text-encoder layers, MMDiT embedders and joint blocks per
stream, final layer, VAE decoder blocks) and every sampling step, it reports max |Δ|, max relative
error and cosine similarity, and the first module whose relative error exceeds --threshold. Writes
a table, a JSON report and a PNG plot; exits 1 when --fail-above is exceeded (for CI use).
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from sd3 import clip as clip_lib
from sd3 import mmdit, vae
from sd3.checkpoint import open_checkpoint
from sd3.devices import resolve_dtype
from sd3.errors import DeviceError, SD3Error
from sd3.sampling import VARIANTS, ModelFiles, Reference, StableDiffusion3
from sd3.sampling.memory import available_bytes
from sd3.testing import reference as ref_lib
from sd3.testing.audit_pairs import REFERENCE_COMPONENT, Agreement, Recorder, pairs_for
from sd3.testing.audit_report import plot, table, write_json
from sd3.testing import random_weights

PROMPT, NEGATIVE = "a photo of a cat sitting on a red chair", "blurry, low quality"
# The default audit (random SD3.5-medium weights, float32) peaks at 11.2 GiB of RSS, 2.0 GiB above its
# largest stage's stored values (the MMDiT's 9.2 GiB, position table included): the libraries, the
# activations, the recorded outputs. The check adds 3 GiB.
OVERHEAD = 3 * 2**30
BEHAVIOURS = ("clip_l_pad", "clip_g_gelu", "t5_length", "t5_truncate", "schedule", "uncond_first", "round_latents")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", choices=list(VARIANTS), default="3.5-medium", help="architecture of the random weights")
    p.add_argument("--tiny", action="store_true", help="the tests' tiny architecture instead (seconds)")
    p.add_argument("--t5-layers", type=int, default=2, help="T5 layers of the random weights (real: 24)")
    for flag in ("--checkpoint", "--clip-l", "--clip-g", "--t5xxl", "--clip-l-tokenizer", "--clip-g-tokenizer", "--t5-tokenizer"):
        p.add_argument(flag, help="real files instead of random weights (all seven together)")
    p.add_argument("--height", type=int, help="default 256 (64 with --tiny)")
    p.add_argument("--width", type=int, help="default 256 (48 with --tiny)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", help="our side's dtype (bfloat16/float16 to measure drift)")
    p.add_argument("--reference-dtype", default="float32", help="diffusers' side's dtype")
    p.add_argument("--reference", choices=["candle", "stability"], help="also measure these behaviours, point by point")
    p.add_argument("--threshold", type=float, default=1e-4, help="report the first module above this max relative error")
    p.add_argument("--fail-above", type=float, help="exit 1 when any module's max relative error exceeds this")
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "sd3-from-scratch" / "audit"))
    p.add_argument("--out", default="audit", help="output prefix: OUT.json and OUT.png")
    p.add_argument("--perturb", help=argparse.SUPPRESS)  # "name=value": add to one of our weights (tests)
    return p


def real_files(args) -> ModelFiles | None:
    """The files the flags name, or None for random weights."""
    real = [args.checkpoint, args.clip_l, args.clip_g, args.t5xxl, args.clip_l_tokenizer, args.clip_g_tokenizer, args.t5_tokenizer]
    if not any(real):
        return None
    if not all(real):
        raise SD3Error("real weights need all of --checkpoint, --clip-l, --clip-g, --t5xxl and the three tokenizer flags")
    c, l, g, t, lt, gt, tt = map(Path, real)
    return ModelFiles(c, l, g, t, c, lt, gt, tt)


def stage_parameters(args) -> dict[str, int]:
    """Stored values (parameters and buffers such as the position table) per stage ("text", "mmdit",
    "vae") of the models the audit will run: from the real files' headers, or the random weights'
    architecture on the `meta` device. Reads no weight."""
    real = real_files(args)
    if real is None:
        counts = {name: sum(t.numel() for t in model.state_dict().values())
                  for name, model in random_weights.architectures(args.variant, args.t5_layers).items()}
    else:
        counts = {}
        for name, path, prefix in (("clip_l", real.clip_l, clip_lib.CLIP_L_PREFIX), ("clip_g", real.clip_g, clip_lib.CLIP_G_PREFIX),
                                   ("t5", real.t5xxl, clip_lib.T5_PREFIX), ("mmdit", real.checkpoint, mmdit.PREFIX),
                                   ("vae", real.vae, vae.PREFIX)):
            with open_checkpoint(path) as checkpoint:
                counts[name] = sum(math.prod(shape) for shape in checkpoint.component(prefix).shapes().values())
    return {"text": counts["clip_l"] + counts["clip_g"] + counts["t5"], "mmdit": counts["mmdit"], "vae": counts["vae"]}


def check_memory(args, dtypes: tuple[torch.dtype, ...]) -> None:
    """Refuse, in one line, an audit that would not fit in the memory available now: both sides hold
    one stage's models at a time, so the need is the largest stage's weights in the wider dtype,
    plus OVERHEAD."""
    stages = stage_parameters(args)
    stage = max(stages, key=stages.get)
    widest = max(dtypes, key=lambda d: d.itemsize)
    need = stages[stage] * widest.itemsize + OVERHEAD
    free = available_bytes(torch.device("cpu"))
    if free is not None and need > free:
        raise DeviceError(
            f"the audit needs about {need / 2**30:.1f} GiB of memory (the {stage} stage's weights in "
            f"{str(widest).removeprefix('torch.')} plus {OVERHEAD / 2**30:.1f} GiB) and only {free / 2**30:.1f} GiB "
            f"is available; sd3 audit --tiny runs the tests' tiny architecture in seconds"
        )


def files_from(args) -> tuple[ModelFiles, dict]:
    real = real_files(args)
    if real is not None:
        return real, {"weights": "real files", "checkpoint": str(real.checkpoint)}
    cache = Path(args.cache_dir)
    if args.tiny:
        return random_weights.write_tiny(cache, args.seed)
    return random_weights.write_random(args.variant, cache, t5_layers=args.t5_layers, seed=args.seed)


def run_ours(files, settings: Reference, dtype, noise, args, recorder=None, names=None, perturb=None):
    """Our pipeline; returns (latents after each step, final latents)."""
    steps = []

    def on_load(component, model):
        if perturb and component == perturb[0]:
            dict(model.named_parameters())[perturb[1]].data += perturb[2]
        if recorder is not None:
            recorder.attach(component, model, names[component])

    with StableDiffusion3(files, reference=settings, dtype=dtype, device="cpu", keep="stage", on_load=on_load) as sd3:
        result = sd3.generate([PROMPT], [NEGATIVE], height=args.height, width=args.width, steps=args.steps,
                              cfg=args.cfg, latents=noise, on_step=lambda i, n, x: steps.append(x.cpu().clone()),
                              quiet=True)
    return steps, result.latents


def run_reference(files, dtype, noise, args, recorder, names):
    """diffusers' pipeline, one stage at a time: each stage's models are built, run and freed before
    the next is built, so the reference holds one stage's weights at most (as ours does with
    keep="stage"); the audit's peak memory is that of the largest stage, the MMDiT."""
    text = ref_lib.pipeline(files, dtype, parts=("text",))
    for component in ("clip_l", "clip_g", "t5"):
        recorder.attach(component, getattr(text, REFERENCE_COMPONENT[component]), names[component])
    with torch.no_grad():
        prompt, negative, pooled, negative_pooled = text.encode_prompt(
            PROMPT, None, None, device=torch.device("cpu"), negative_prompt=NEGATIVE, max_sequence_length=256)
    del text
    gc.collect()

    steps = []

    def on_step(pipe, i, t, kwargs):
        steps.append(kwargs["latents"].float().cpu().clone())
        return kwargs

    denoise = ref_lib.pipeline(files, dtype, parts=("mmdit",))
    recorder.attach("mmdit", denoise.transformer, names["mmdit"])
    denoise(prompt_embeds=prompt, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled,
            negative_pooled_prompt_embeds=negative_pooled, height=args.height, width=args.width,
            num_inference_steps=args.steps, guidance_scale=args.cfg, latents=noise.to(dtype), output_type="latent",
            callback_on_step_end=on_step)
    del denoise
    gc.collect()

    autoencoder = ref_lib.autoencoder(files, dtype)
    recorder.attach("vae", autoencoder, names["vae"])
    with torch.no_grad():
        autoencoder.decode(steps[-1].to(dtype) / autoencoder.config.scaling_factor + autoencoder.config.shift_factor)
    return steps


def audit(args) -> int:
    start = time.perf_counter()
    args.height = args.height or (64 if args.tiny else 256)
    args.width = args.width or (48 if args.tiny else 256)
    ours_dtype, ref_dtype = resolve_dtype(args.dtype), resolve_dtype(args.reference_dtype)
    if not 1 <= args.t5_layers <= 24:
        raise SD3Error(f"--t5-layers must be between 1 and 24 (T5-XXL's), got {args.t5_layers}")
    out_dir = Path(args.out).expanduser().parent
    if not out_dir.is_dir():
        raise SD3Error(f"--out {args.out}: the folder {out_dir} does not exist")
    if not args.tiny:
        check_memory(args, (ours_dtype, ref_dtype))  # before any weight is written or read
    files, setup = files_from(args)
    setup.update(height=args.height, width=args.width, steps=args.steps, cfg=args.cfg,
                 dtype=str(ours_dtype).removeprefix("torch."), reference_dtype=str(ref_dtype).removeprefix("torch."),
                 prompt=PROMPT, negative_prompt=NEGATIVE)
    noise = torch.randn(1, 16, args.height // 8, args.width // 8, generator=torch.Generator().manual_seed(args.seed))

    probe = StableDiffusion3(files)  # reads the architectures off the files; loads nothing
    with open_checkpoint(files.t5xxl) as t5_file:
        t5_layers = clip_lib.T5Config.from_state_dict(t5_file.component(clip_lib.T5_PREFIX).shapes()).num_layers
    layers = {}
    for name, path, prefix in (("clip_l", files.clip_l, clip_lib.CLIP_L_PREFIX), ("clip_g", files.clip_g, clip_lib.CLIP_G_PREFIX)):
        with open_checkpoint(path) as f:
            layers[name] = clip_lib.CLIPConfig.from_state_dict(f.component(prefix).shapes()).num_hidden_layers
    pairs = pairs_for(layers["clip_l"], layers["clip_g"], t5_layers, probe.mmdit_config.depth, 4)
    ref_names = {c: {p.reference for p in pairs if p.component == c} for c in REFERENCE_COMPONENT}
    our_names = {c: {p.ours for p in pairs if p.component == c} for c in REFERENCE_COMPONENT}

    perturb = None
    if args.perturb:
        target, value = args.perturb.split("=")
        component, parameter = target.split(".", 1)
        perturb = (component, parameter, float(value))

    ours_rec, ref_rec = Recorder(), Recorder()
    diffusers_like = Reference.named("diffusers")
    ours_steps, ours_final = run_ours(files, diffusers_like, ours_dtype, noise, args, ours_rec, our_names, perturb)
    ours_rec.detach()
    ref_steps = run_reference(files, ref_dtype, noise, args, ref_rec, ref_names)
    ref_rec.detach()

    rows = []
    for p in pairs:
        calls = "all" if p.component in ("clip_l", "clip_g", "t5") else "first"
        mine, theirs = ours_rec.output(p.component, p.ours, p.output, calls), ref_rec.output(p.component, p.reference, p.output, calls)
        if mine is None or theirs is None:
            continue
        rows.append({"module": p.name, "stream": p.stream, "depth": p.depth, **vars(Agreement.of(mine, theirs))})
        if p.component == "mmdit" and p.ours == "final_layer":  # sampling sits between the MMDiT and the VAE
            for i, (a, b) in enumerate(zip(ours_steps, ref_steps)):
                rows.append({"module": f"sampling step {i + 1}", "stream": "sampling", "depth": i + 1, **vars(Agreement.of(a, b))})

    behaviours = []
    if args.reference:
        chosen = Reference.named(args.reference)
        points = [f for f in BEHAVIOURS if getattr(chosen, f) != getattr(diffusers_like, f)]
        for point in points + ["all"]:
            settings = chosen if point == "all" else replace(diffusers_like, **{point: getattr(chosen, point)})
            _, final = run_ours(files, settings, ours_dtype, noise, args)
            value = "all at once" if point == "all" else f"{getattr(diffusers_like, point)} -> {getattr(chosen, point)}"
            behaviours.append({"point": point, "change": value, **vars(Agreement.of(final, ref_steps[-1]))})

    print(table(rows, args.threshold))
    if behaviours:
        print(f"\nfinal latents with {args.reference}'s behaviour, point by point, against diffusers:")
        for b in behaviours:
            print(f"  {b['point']:<14} {b['change']:<34} max rel {b['max_rel']:.3e}  cosine {b['cosine']:.6f}")
    json_path, png_path = Path(f"{args.out}.json"), Path(f"{args.out}.png")  # names may hold dots ("3.5")
    write_json(json_path, setup, rows, behaviours, args.threshold)
    title = f"ours ({setup['dtype']}) vs diffusers ({setup['reference_dtype']}), {setup.get('variant', 'real weights')}, {args.width}x{args.height}, {args.steps} steps"
    plot(png_path, rows, title, args.threshold)
    print(f"\nwrote {json_path} and {png_path} in {time.perf_counter() - start:.0f}s")
    worst = max(r["max_rel"] for r in rows)
    if args.fail_above is not None and worst > args.fail_above:
        print(f"FAIL: max relative error {worst:.3e} exceeds --fail-above {args.fail_above:.0e}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return audit(args)
    except SD3Error as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
