"""Write fp8 (.safetensors) or GGUF files from a real-layout checkpoint, for small GPUs and for tests.

    python scripts/quantize.py sd3.5_medium.safetensors sd3.5_medium-Q4_0.gguf --to Q4_0

The same command is installed as `sd3 quantize`; both run `sd3.cli.quantize.main`.
"""

import sys

from sd3.cli.quantize import main

if __name__ == "__main__":
    sys.exit(main())
