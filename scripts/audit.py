"""Parity audit: ours against diffusers, module by module. The same as `sd3 audit` (sd3/testing/audit.py)."""

import sys

from sd3.testing.audit import main

if __name__ == "__main__":
    sys.exit(main())
