"""`python -m sd3.cli ...` (and `torchrun -m sd3.cli ...`): the same as the installed `sd3` command."""

import sys

from sd3.cli import main

sys.exit(main())
