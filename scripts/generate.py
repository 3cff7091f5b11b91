"""Text to image with the flags of Candle's stable-diffusion-3 example: this file stands where its main.rs does.

    python scripts/generate.py --which 3.5-medium --prompt "a photo of a cat" --final-image cat.png

The same command is installed as `sd3 generate`; both run `sd3.cli.generate.main`, which mirrors
huggingface/candle candle-examples/examples/stable-diffusion-3/main.rs: parse the flags, resolve the
files, encode, denoise, decode, save.
"""

import sys

from sd3.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
