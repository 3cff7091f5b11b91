"""Side-by-side benchmark of our implementation and diffusers on the same real-size files.

    sd3 benchmark --quick      # < 10 minutes on a 2-core CPU (or python scripts/benchmark.py --quick)
    sd3 benchmark              # the full table of docs/benchmarks.md

Random weights at the real architectures (SD3-medium's 2.0 B and SD3.5-medium's 2.5 B MMDiT, real
CLIP-L, CLIP-G and VAE, T5-XXL at its real width with 2 of its 24 layers) are written once, in the
real single-file layout, to a cache that both implementations load. Every measurement runs in a
fresh process, alternating ours and diffusers, so that load times and peak memory are each
process's own. Prints a table with every ratio (ours / diffusers) and writes a JSON file.

Residency (ours alone, SD3.5-medium's files, float32 and bfloat16): two `generate()` calls on one
pipeline with `keep="all"`; the second call's wall time against its pure compute (text encoding,
denoising and decoding, without loads or checks), and the first call's share spent loading.

Low precision (ours alone, `--only quant`, sd3/testing/benchmark_quant.py): the MMDiT from bf16,
fp8, scaled fp8, Q8_0 and Q4_0 files: memory, step time and agreement with the bf16 model.

Watching the flow (ours alone, `--only previews`, sd3/testing/benchmark_previews.py): what a `proj`
preview at every step adds to a 256² step, and TAESD3's decoding time against the VAE's.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from sd3.testing import benchmark_peers
from sd3.testing.benchmark_peers import peers_plan, peers_table, run_peer
from sd3.testing.benchmark_previews import measure_previews, preview_plan, previews_table
from sd3.testing.benchmark_quant import FORMATS, agreement, measure_quant, quant_files, quant_table
from sd3.testing.benchmark_workers import measure
from sd3.testing.random_weights import write_random, write_tiny


def plan(quick: bool, tiny: bool, compile_: bool = False) -> list[dict]:
    """The measurements, each to be run once for ours and once for diffusers."""
    variant = "tiny" if tiny else "3-medium"
    small, large = (32, 64) if tiny else (256, 512)
    specs = [{"task": "mmdit", "variant": variant, "dtype": dtype, "res": small} for dtype in ("float32", "bfloat16")]
    if not quick:
        specs += [{"task": "mmdit", "variant": variant, "dtype": dtype, "res": large} for dtype in ("float32", "bfloat16")]
        specs += [{"task": "mmdit", "variant": "tiny" if tiny else "3.5-medium", "dtype": "bfloat16", "res": large}]
    if compile_:  # ours compiled (its "load" includes the compilation) against diffusers eager
        specs += [{"task": "mmdit", "variant": variant, "dtype": dtype, "res": small, "compile": True}
                  for dtype in ("float32", "bfloat16")]
    specs += [
        {"task": "text", "variant": variant, "dtype": "float32"},
        {"task": "vae", "variant": variant, "dtype": "float32", "res": large},
        {"task": "pipeline", "variant": variant, "dtype": "float32", "res": small, "steps": 4 if not quick else 2},
    ]
    return specs


def residency_plan(quick: bool, tiny: bool) -> list[dict]:
    """Two generate() calls on one pipeline with keep="all", per dtype (ours alone)."""
    variant, res = ("tiny", 32) if tiny else ("3.5-medium", 256)
    return [{"task": "residency", "variant": variant, "dtype": dtype, "res": res, "steps": 2 if quick else 4}
            for dtype in ("float32", "bfloat16")]


def residency_table(results: list[dict]) -> str:
    """Per dtype: each call's wall time, loads and compute; the second call's wall / compute; the first's load share."""
    title = 'keep="all", two generate() calls'
    lines = [f"{title:<44}  {'wall':>8}  {'load':>8}  {'compute':>8}  {'wall/compute':>12}"]
    for r in results:
        for call in ("first", "second"):
            wall, load, compute = r[f"{call}_wall_s"], r[f"{call}_load_s"], r[f"{call}_compute_s"]
            what = f"{r['variant']} {r['dtype']} {r['res']}², {r['steps']} steps, {call} call"
            lines.append(f"{what:<44}  {wall:>7.2f}s  {load:>7.2f}s  {compute:>7.2f}s  {wall / compute:>12.3f}")
        lines.append(f"{'  first call: share of wall time loading':<44}  {r['first_load_s'] / r['first_wall_s']:>8.1%}")
    return "\n".join(lines)


def throughput_plan(quick: bool, tiny: bool) -> list[dict]:
    """A 16-prompt list, bfloat16: ours staged, ours resident, and diffusers' pipeline in a loop."""
    variant, res = ("tiny", 32) if tiny else ("3.5-medium", 256)
    base = {"task": "throughput", "variant": variant, "dtype": "bfloat16", "res": res, "steps": 2 if quick else 4,
            "prompts": 16}
    return [{**base, "impl": "ours", "keep": "stage"}, {**base, "impl": "ours", "keep": "all"},
            {**base, "impl": "diffusers"}]


def throughput_table(results: list[dict]) -> str:
    reference = next(r for r in results if r["impl"] == "diffusers")
    lines = [f"{'16 prompts, load to last image':<56}  {'wall':>8}  {'images/hour':>11}  {'vs diffusers':>12}  loading"]
    for r in results:
        what = f"{r['variant']} {r['dtype']} {r['res']}², {r['steps']} steps, " + (
            f"ours keep={r['keep']}" if r["impl"] == "ours" else "diffusers, a call per prompt")
        share = f"{r['stream']['load_share']:.0%}" if r["stream"] else "-"
        lines.append(f"{what:<56}  {r['wall_s']:>7.1f}s  {r['images_per_hour']:>11.0f}  "
                     f"{r['images_per_hour'] / reference['images_per_hour']:>11.2f}×  {share}")
    return "\n".join(lines)


def quant_plan(quick: bool, tiny: bool) -> list[dict]:
    """The MMDiT from each low-precision file (ours alone), bfloat16 compute."""
    variant, sizes = ("tiny", (32,)) if tiny else ("3.5-medium", (256,) if quick else (256, 512))
    # The image (agreement) at the first size only; the larger one times the step.
    return [{"task": "quant", "variant": variant, "dtype": "bfloat16", "format": f, "res": res,
             "steps": 2 if quick else 4, "image": res == sizes[0]} for res in sizes for f in FORMATS]


def run_worker(spec: dict, cache: str) -> dict:
    command = [sys.executable, "-m", "sd3.testing.benchmark", "--worker", json.dumps(spec), "--cache-dir", cache]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"worker {spec} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def files_for(variant: str, cache: Path):
    return write_tiny(cache)[0] if variant == "tiny" else write_random(variant, cache)[0]


def rows(results: list[dict]) -> list[tuple[str, float, float, str]]:
    """(what, ours, diffusers, unit) for every compared quantity."""
    out = []
    pairs = {}
    for r in results:
        key = json.dumps({k: v for k, v in r.items() if k in ("task", "variant", "dtype", "res", "steps", "compile")}, sort_keys=True)
        pairs.setdefault(key, {})[r["impl"]] = r
    for pair in pairs.values():
        ours, ref = pair["ours"], pair["diffusers"]
        where = f"{ours['variant']} {ours['dtype']}" + (f" {ours['res']}²" if "res" in ours else "")
        where += ", ours compiled" if ours.get("compile") else ""
        if ours["task"] == "mmdit":
            out.append((f"MMDiT step, batch 2, {where}", ours["step_s"], ref["step_s"], "s"))
            for r, name in ((ours, "ours"), (ref, "diffusers")):
                r["efficiency"] = r["flops"] / r["step_s"] / r["matmul_flops_per_s"]
            out.append((f"  matmul FLOP/s as a share of dense matmul ({ours['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s)",
                        ours["efficiency"], ref["efficiency"], "×"))
            ready = "load + compile" if ours.get("compile") else "load"
            out.append((f"MMDiT {ready} to ready, {where}", ours["load_s"], ref["load_s"], "s"))
            out.append((f"peak memory, load + one step, {where}", ours["peak_rss_bytes"] / 2**30, ref["peak_rss_bytes"] / 2**30, "GiB"))
        elif ours["task"] == "text":
            out.append((f"text encoding (prompt + negative, T5 77), {where}", ours["encode_s"], ref["encode_s"], "s"))
        elif ours["task"] == "vae":
            out.append((f"VAE decode, {where}", ours["decode_s"], ref["decode_s"], "s"))
        elif ours["task"] == "pipeline":
            out.append((f"pipeline end to end, {ours['steps']} steps, {where}", ours["wall_s"], ref["wall_s"], "s"))
            out.append((f"peak memory, whole pipeline, {where}", ours["peak_rss_bytes"] / 2**30, ref["peak_rss_bytes"] / 2**30, "GiB"))
    return out


def table(out: list[tuple[str, float, float, str]]) -> str:
    width = max(len(r[0]) for r in out)
    lines = [f"{'measurement':<{width}}  {'ours':>9}  {'diffusers':>9}  {'ours/diffusers':>14}"]
    for what, ours, ref, unit in out:
        lines.append(f"{what:<{width}}  {ours:>8.3f}{unit[0] if unit != '×' else ' '}  {ref:>8.3f}{unit[0] if unit != '×' else ' '}  {ours / ref:>14.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="256² steps, text, VAE and a 2-step pipeline only")
    parser.add_argument("--tiny", action="store_true", help="tiny architecture: a smoke test of the script itself")
    parser.add_argument("--compile", action="store_true", help="also time our MMDiT under torch.compile")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "sd3-from-scratch" / "audit"))
    parser.add_argument("--out", default="benchmark.json", help="the JSON file the results are written to")
    parser.add_argument("--only", choices=("compare", "residency", "throughput", "quant", "previews", "peers"),
                        help="run one part: ours against diffusers, residency, a 16-prompt list's throughput, "
                             "low-precision MMDiT files, step previews and TAESD3, or stable-diffusion.cpp side by side")
    parser.add_argument("--sd-cli", help="with --only peers: a stable-diffusion.cpp `sd` binary instead of its Python package")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        files = files_for(spec["variant"], Path(args.cache_dir))
        if spec["task"] in ("quant", "previews", "tiny_decoder"):
            cache = Path(files.checkpoint).parent
            measure_part = measure_quant if spec["task"] == "quant" else measure_previews
            print(json.dumps({**spec, **measure_part(spec, files, cache)}))
        else:
            print(json.dumps(measure(spec, files)))
        return 0
    out_file = Path(args.out)
    if out_file.is_dir() or not out_file.parent.is_dir():  # refused before anything is timed
        print(f"error: --out {args.out} must name a JSON file in an existing folder", file=sys.stderr)
        return 1
    specs = plan(args.quick, args.tiny, args.compile) if args.only in (None, "compare") else []
    residency = residency_plan(args.quick, args.tiny) if args.only in (None, "residency") else []
    throughput = throughput_plan(args.quick, args.tiny) if args.only in (None, "throughput") else []
    quantised = quant_plan(args.quick, args.tiny) if args.only in (None, "quant") else []
    watched = preview_plan(args.quick, args.tiny) if args.only in (None, "previews") else []
    peers = peers_plan(args.quick) if args.only == "peers" else []  # never by default: it builds C++
    if peers and benchmark_peers.peer_available(args.sd_cli):
        print(benchmark_peers.peer_available(args.sd_cli), file=sys.stderr)
        peers = []
    elif peers and args.tiny:  # stable-diffusion.cpp only knows the real architectures
        print("--only peers needs the real-size files (stable-diffusion.cpp cannot load the tiny architecture): "
              "peers skipped", file=sys.stderr)
        peers = []
    for variant in {s["variant"] for s in specs + residency + throughput + quantised + watched + peers}:
        files = files_for(variant, Path(args.cache_dir))  # write the caches before anything is timed
        if quantised or peers:
            quant_paths = quant_files(files, Path(files.checkpoint).parent)
    results = []
    for index, spec in enumerate(specs):
        for impl in ("ours", "diffusers") if index % 2 == 0 else ("diffusers", "ours"):  # neither always first
            worker_spec = {**spec, "impl": impl}
            if impl == "diffusers":
                worker_spec.pop("compile", None)
            results.append({**run_worker(worker_spec, args.cache_dir), "compile": spec.get("compile", False)})
            print(f"  measured {spec['task']} {spec.get('res', '')} {spec['dtype']} {impl}", file=sys.stderr, flush=True)
    resident = []
    for spec in residency:
        resident.append(run_worker({**spec, "impl": "ours"}, args.cache_dir))
        print(f"  measured residency {spec['dtype']}", file=sys.stderr, flush=True)
    listed = []
    for spec in throughput:
        listed.append(run_worker(spec, args.cache_dir))
        print(f"  measured throughput {spec['impl']} {spec.get('keep', '')}", file=sys.stderr, flush=True)
    low = []
    for spec in quantised:
        low.append(run_worker(spec, args.cache_dir))
        print(f"  measured {spec['format']}", file=sys.stderr, flush=True)
    low = agreement(low) if low else low
    compared = []
    for spec in peers:
        compared.append(run_peer(spec, files, quant_paths, torch.get_num_threads(), args.sd_cli))
        print(f"  measured peers {spec['format']} {spec['res']} {spec['impl']}", file=sys.stderr, flush=True)
    previews = []
    for spec in watched:
        previews.append(run_worker(spec, args.cache_dir))
        print(f"  measured {spec['task']} {spec['res']}", file=sys.stderr, flush=True)
    out = rows(results)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"\n{machine}")
    if out:
        print(table(out))
    if resident:
        print("\n" + residency_table(resident))
    if listed:
        print("\n" + throughput_table(listed))
    if low:
        print("\n" + quant_table(low))
    if previews:
        print("\n" + previews_table(previews))
    if compared:
        print("\n" + peers_table(compared))
    Path(args.out).write_text(json.dumps({"machine": machine, "results": results, "residency": resident,
                                          "throughput": listed, "quant": low, "previews": previews, "peers": compared,
                                          "table": [dict(zip(("what", "ours", "diffusers", "unit"), r)) for r in out]}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
