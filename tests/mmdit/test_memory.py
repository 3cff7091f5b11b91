"""Loading keeps peak memory near one copy of the weights in the target dtype.

Measured in a fresh process as the peak of RssAnon (anonymous memory, sampled every millisecond
while loading). safetensors maps the file privately (copy-on-write), so a tensor loaded in the
file's own dtype is a view of the file's pages: page cache the kernel can drop, not counted here,
and never written back to the file. Loading float32 weights from a float32 file therefore costs no
anonymous memory at all, and converting to bfloat16 costs exactly one bfloat16 copy. Building the
model with random weights first, or reading the whole file before converting it, would add a
second copy and fail these bounds.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from sd3.testing.tiny.mmdit import TinyMMDiT, mmdit_state_dict

MEASURE = r"""
import sys, threading, time
import torch
from sd3.mmdit import load_mmdit

def rss_anon() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))

base = peak = rss_anon()
done = False
def sample():
    global peak
    while not done:
        peak = max(peak, rss_anon())
        time.sleep(0.001)
sampler = threading.Thread(target=sample)
sampler.start()
model = load_mmdit(sys.argv[1], dtype=sys.argv[2])
done = True
sampler.join()
print(max(peak, rss_anon()) - base)
"""

# 4 blocks of width 768: about 80 M values, 306 MiB in float32.
ARCH = TinyMMDiT(depth=4, heads=12, pos_embed_max_size=16)
SLACK = 48 * 2**20  # interpreter and allocator noise


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    state_dict = mmdit_state_dict(ARCH, seed=0)
    path = tmp_path_factory.mktemp("memory") / "mmdit.safetensors"
    save_file(state_dict, str(path))
    sizes = [t.numel() * 4 for t in state_dict.values()]
    return path, sum(sizes), max(sizes)


def _peak_bytes(path: Path, dtype: str) -> int:
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), dtype], capture_output=True, text=True, cwd=root, check=True
    )
    return int(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from Linux's /proc")
@pytest.mark.parametrize(
    "dtype, copied_bytes_per_value",
    [("float32", 0), ("bfloat16", 2)],  # same dtype as the file: zero-copy; else one converted copy
)
def test_peak_memory_is_at_most_one_copy_in_the_target_dtype(checkpoint, dtype, copied_bytes_per_value):
    path, float32_bytes, largest_tensor = checkpoint
    copy = float32_bytes * copied_bytes_per_value // 4
    peak = _peak_bytes(path, dtype)
    # The copy, plus one float32 tensor in flight while it is converted.
    bound = copy + largest_tensor + SLACK
    assert peak <= bound, f"peak {peak / 2**20:.0f} MiB > {bound / 2**20:.0f} MiB (copy {copy / 2**20:.0f} MiB)"
    assert peak >= 0.9 * copy, "the measurement should at least see the converted weights"
