"""``python -m benchmarks``: the full benchmark (benchmarks/run.py)."""

import sys

from benchmarks.run import main

sys.exit(main())
