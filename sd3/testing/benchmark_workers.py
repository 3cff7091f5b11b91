"""One benchmark measurement per fresh process: ours or diffusers, on the same files.

`python scripts/benchmark.py --worker '{"task": ..., "impl": ...}'` runs `measure(spec)` and prints
one JSON line; the parent alternates implementations and compares. Peak memory is the process's
peak resident set size, which includes touched pages of memory-mapped files: Linux's `VmHWM`
(/proc/self/status), which starts afresh at exec, where `ru_maxrss` carries over the parent's
resident size at fork (a parent that has just written 7 GB of files reports it in every worker).
"""

from __future__ import annotations

import resource
import time

import torch

PROMPT, NEGATIVE = "a photo of a cat sitting on a red chair", "blurry, low quality"


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
    except (OSError, StopIteration):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn, repeats: int) -> float:
    """Fastest of `repeats` calls after one warm-up call: on a shared 2-core machine the spread
    between repeats (about 10 %) is interference, and the minimum is the least disturbed run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops(dtype: torch.dtype, m: int = 2048, k: int = 2048, n: int = 4096) -> float:
    """Dense matmul FLOP/s in `dtype` on this machine: the ceiling the MMDiT is measured against."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    seconds = timed(lambda: a @ b, 5)
    return 2 * m * k * n / seconds


def mmdit_flops(config, batch: int, image_tokens: int, context_tokens: int) -> float:
    """Matmul FLOPs of one MMDiT forward (elementwise work and the embedders left out).

    Per joint block over n = image + context tokens of width d: the linear layers of both streams,
    24 d^2 per token (qkv 3, proj 1, MLP 8, times 2 for multiply-add), and the joint attention,
    4 n^2 d; an MMDiT-X block adds its image-only attention, 8 d^2 + 4 n_img d per image token.
    """
    d, n = config.hidden_size, image_tokens + context_tokens
    per_block = 24 * d * d * n + 4 * n * n * d
    extra = len(config.x_block_self_attn_layers) * (8 * d * d * image_tokens + 4 * image_tokens**2 * d)
    return batch * (config.depth * per_block + extra)


def _mmdit(spec, files, dtype):
    from sd3 import mmdit

    res, repeats = spec["res"], spec.get("repeats", 3)
    start = time.perf_counter()
    if spec["impl"] == "ours":
        model = mmdit.load_mmdit(files.checkpoint, dtype=dtype)
        if spec.get("compile"):
            model = torch.compile(model)
    else:
        from sd3.testing import reference

        model = reference.transformer(files, dtype)
    load = time.perf_counter() - start
    config = mmdit.Config.from_state_dict(_our_shapes(files))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, res // 8, res // 8, generator=g).to(dtype)
    t = torch.full((2,), 500.0)
    y = torch.randn(2, config.adm_in_channels, generator=g).to(dtype)
    context = torch.randn(2, 154, config.context_dim, generator=g).to(dtype)
    with torch.inference_mode():
        if spec["impl"] == "ours":
            if spec.get("compile"):  # the first call compiles: time it apart from the steps
                start = time.perf_counter()
                model(x, t, y, context)
                load += time.perf_counter() - start
            step = timed(lambda: model(x, t, y, context), repeats)
        else:
            step = timed(lambda: model(hidden_states=x, encoder_hidden_states=context, pooled_projections=y,
                                       timestep=t, return_dict=False), repeats)
    tokens = (res // 16) ** 2
    return {"load_s": load, "step_s": step, "flops": mmdit_flops(config, 2, tokens, 154),
            "matmul_flops_per_s": matmul_flops(dtype)}


def _our_shapes(files):
    from sd3 import mmdit
    from sd3.checkpoint import open_checkpoint

    with open_checkpoint(files.checkpoint) as checkpoint:
        return checkpoint.component(mmdit.PREFIX).shapes()


def _vae(spec, files, dtype):
    res = spec["res"]
    z = torch.randn(1, 16, res // 8, res // 8, generator=torch.Generator().manual_seed(0))
    if spec["impl"] == "ours":
        from sd3 import vae

        model = vae.load_vae(files.vae, dtype=dtype)
        decode = lambda: vae.decode_latents(model, z)  # noqa: E731
    else:
        from sd3.testing import reference

        model = reference.autoencoder(files, dtype)
        c = model.config
        decode = lambda: model.decode(z.to(dtype) / c.scaling_factor + c.shift_factor).sample  # noqa: E731
    with torch.inference_mode():
        return {"decode_s": timed(decode, spec.get("repeats", 2))}


def _text(spec, files, dtype):
    """Encoding the prompt and the negative prompt with loaded encoders (loading not counted)."""
    if spec["impl"] == "ours":
        from sd3 import clip

        encoder = clip.TripleTextEncoder(
            clip.load_clip_l(files.clip_l, dtype=dtype), clip.CLIPTokenizer(files.clip_l_tokenizer),
            clip.load_clip_g(files.clip_g, dtype=dtype), clip.CLIPTokenizer(files.clip_g_tokenizer, pad_token="!"),
            clip.load_t5(files.t5xxl, dtype=dtype), clip.T5Tokenizer(files.t5_tokenizer, max_length=77),
        )
        encode = lambda: encoder.encode([PROMPT, NEGATIVE])  # noqa: E731
    else:
        from sd3.testing import reference

        pipe = reference.pipeline(files, dtype, parts=("text",))
        encode = lambda: pipe.encode_prompt(  # noqa: E731
            prompt=PROMPT, prompt_2=None, prompt_3=None, negative_prompt=NEGATIVE, do_classifier_free_guidance=True,
            max_sequence_length=77, device=torch.device("cpu"),
        )
    with torch.inference_mode():
        return {"encode_s": timed(encode, spec.get("repeats", 2))}


def _pipeline(spec, files, dtype):
    """Prompt to image: every load, text encoding, the steps and decoding, as a user runs it."""
    res, steps = spec["res"], spec["steps"]
    noise = torch.randn(1, 16, res // 8, res // 8, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    if spec["impl"] == "ours":
        from sd3.sampling import StableDiffusion3

        StableDiffusion3(files, dtype=dtype, device="cpu", keep="stage").generate(
            [PROMPT], [NEGATIVE], height=res, width=res, steps=steps, cfg=4.0, latents=noise, quiet=True
        )
    else:
        from sd3.testing import reference

        pipe = reference.pipeline(files, dtype)
        with torch.inference_mode():
            pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=res, width=res, num_inference_steps=steps,
                 guidance_scale=4.0, latents=noise.to(dtype), max_sequence_length=77)
    return {"wall_s": time.perf_counter() - start}


def _residency(spec, files, dtype):
    """Two calls on one pipeline that keeps every model: the first loads, the second only computes."""
    from sd3.sampling import StableDiffusion3

    res, steps = spec["res"], spec["steps"]
    noise = torch.randn(1, 16, res // 8, res // 8, generator=torch.Generator().manual_seed(0))
    pipe = StableDiffusion3(files, dtype=dtype, device="cpu", keep="all")
    out = {}
    for call in ("first", "second"):
        start = time.perf_counter()
        result = pipe.generate([PROMPT], [NEGATIVE], height=res, width=res, steps=steps, cfg=4.0, latents=noise, quiet=True)
        t = result.timings
        out.update({f"{call}_wall_s": time.perf_counter() - start, f"{call}_load_s": t["load"],
                    f"{call}_compute_s": t["encode"] + t["denoise"] + t["decode"]})
    out["loads"] = dict(pipe.models.loads)
    return out


def _throughput(spec, files, dtype):
    """A 16-prompt list from load to the last image: ours streamed (staged or resident), or
    diffusers' pipeline loaded once and called once per prompt, as a user would loop over a list."""
    res, steps, count = spec["res"], spec["steps"], spec["prompts"]
    prompts = [f"{PROMPT}, photo number {i}" for i in range(count)]
    start = time.perf_counter()
    if spec["impl"] == "diffusers":
        from sd3.testing import reference

        pipe = reference.pipeline(files, dtype)
        with torch.inference_mode():
            for i, prompt in enumerate(prompts):
                pipe(prompt=prompt, negative_prompt=NEGATIVE, height=res, width=res, num_inference_steps=steps,
                     guidance_scale=4.0, max_sequence_length=77, generator=torch.Generator().manual_seed(i))
        loads = None
    else:
        from sd3.sampling import StableDiffusion3, StreamStats

        stats = StreamStats()
        pipe = StableDiffusion3(files, dtype=dtype, device="cpu", keep=spec["keep"])
        for _ in pipe.generate_many(prompts, negative_prompt=NEGATIVE, height=res, width=res, steps=steps, cfg=4.0,
                                    stats=stats, quiet=True):
            pass
        loads = {"load_share": stats.load_share, "chunks": stats.chunk_sizes}
    wall = time.perf_counter() - start
    return {"wall_s": wall, "images_per_hour": count * 3600 / wall, "stream": loads}


TASKS = {"mmdit": _mmdit, "vae": _vae, "text": _text, "pipeline": _pipeline, "residency": _residency,
         "throughput": _throughput}


def measure(spec: dict, files) -> dict:
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    result = TASKS[spec["task"]](spec, files, getattr(torch, spec["dtype"]))
    return {**spec, **result, "peak_rss_bytes": peak_rss_bytes()}
