"""Benchmark: ours against diffusers on the same real-size files. The same as `sd3 benchmark` (sd3/testing/benchmark.py)."""

import sys

from sd3.testing.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
