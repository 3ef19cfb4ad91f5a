"""python -m greenknobs: the same command as ``greenknobs``."""

import sys

from greenknobs.cli import main

sys.exit(main())
