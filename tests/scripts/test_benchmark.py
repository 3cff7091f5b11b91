"""scripts/benchmark.py on the tiny architecture: a smoke test that every measurement runs and pairs up."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "benchmark.json"
    done = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "--tiny", "--quick", "--out", str(out), "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    whats = [row["what"] for row in report["table"]]
    for expected in ("MMDiT step", "share of dense matmul", "MMDiT load to ready", "peak memory, load + one step",
                     "text encoding", "VAE decode", "pipeline end to end", "peak memory, whole pipeline"):
        assert any(expected in what for what in whats), expected
    assert all(row["ours"] > 0 and row["diffusers"] > 0 for row in report["table"])
    for run in report["residency"]:  # keep="all": the second call loads nothing
        assert run["second_load_s"] == 0 and run["first_load_s"] > 0 and set(run["loads"].values()) == {1}
    assert [r["dtype"] for r in report["residency"]] == ["float32", "bfloat16"] and "second call" in done.stdout
    assert "ours/diffusers" in done.stdout
    quant = {r["format"]: r for r in report["quant"]}  # the MMDiT from each low-precision file
    assert list(quant) == ["bfloat16", "fp8", "fp8 scaled", "Q8_0", "Q4_0"] and "RSS steps" in done.stdout
    assert quant["bfloat16"]["max_abs_latents"] == 0 and quant["bfloat16"]["psnr_db"] == float("inf")
    assert all(0 < r["max_abs_latents"] and 0 < r["psnr_db"] < float("inf") for f, r in quant.items() if f != "bfloat16")
    assert quant["Q4_0"]["state_bytes"] < quant["Q8_0"]["state_bytes"] < quant["bfloat16"]["state_bytes"]


def test_out_must_be_a_file_in_an_existing_folder(tmp_path):
    """Checked before anything is timed: a folder (or a missing one) is a one-line error, not a traceback
    after the whole run."""
    for out in (tmp_path, tmp_path / "missing" / "b.json"):
        done = subprocess.run([sys.executable, "-m", "sd3.cli", "benchmark", "--only", "peers", "--out", str(out)],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert done.returncode == 1 and "must name a JSON file in an existing folder" in done.stderr
        assert "Traceback" not in done.stderr
