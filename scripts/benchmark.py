"""Side-by-side benchmark of our implementation and diffusers on the same real-size files.

    python scripts/benchmark.py --quick      # < 10 minutes on a 2-core CPU
    python scripts/benchmark.py              # the full table of docs/benchmarks.md

Random weights at the real architectures (SD3-medium's 2.0 B and SD3.5-medium's 2.5 B MMDiT, real
CLIP-L, CLIP-G and VAE, T5-XXL at its real width with 2 of its 24 layers) are written once, in the
real single-file layout, to a cache that both implementations load. Every measurement runs in a
fresh process, alternating ours and diffusers, so that load times and peak memory are each
process's own. Prints a table with every ratio (ours / diffusers) and writes a JSON file.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/tiny, for the tiny architecture

import torch  # noqa: E402

from sd3audit.weights import write_random, write_tiny  # noqa: E402
from sd3audit.workers import measure  # noqa: E402


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


def run_worker(spec: dict, cache: str) -> dict:
    command = [sys.executable, str(Path(__file__)), "--worker", json.dumps(spec), "--cache-dir", cache]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
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
    parser.add_argument("--out", default="benchmark.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(measure(spec, files_for(spec["variant"], Path(args.cache_dir)))))
        return 0
    specs = plan(args.quick, args.tiny, args.compile)
    for variant in {s["variant"] for s in specs}:
        files_for(variant, Path(args.cache_dir))  # write the caches before anything is timed
    results = []
    for index, spec in enumerate(specs):
        for impl in ("ours", "diffusers") if index % 2 == 0 else ("diffusers", "ours"):  # neither always first
            worker_spec = {**spec, "impl": impl}
            if impl == "diffusers":
                worker_spec.pop("compile", None)
            results.append({**run_worker(worker_spec, args.cache_dir), "compile": spec.get("compile", False)})
            print(f"  measured {spec['task']} {spec.get('res', '')} {spec['dtype']} {impl}", file=sys.stderr, flush=True)
    out = rows(results)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"\n{machine}\n" + table(out))
    Path(args.out).write_text(json.dumps({"machine": machine, "results": results,
                                          "table": [dict(zip(("what", "ours", "diffusers", "unit"), r)) for r in out]}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
