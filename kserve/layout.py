"""Lay out a KServe storageUri folder for the TorchServe runtime: the command line of serving/kserve_layout.py.

    python kserve/layout.py runs/demo/best_model.pth kserve_storage [--workers N] [--device cpu|gpu]
"""

import os
import sys
from pathlib import Path

# Run the package's module with the repository root importable, keeping the caller's working directory (paths in
# the arguments are relative to it); exec, so signals and the exit status are the module's own.
ROOT = str(Path(__file__).resolve().parents[1])
env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH"))))}
os.execve(sys.executable, [sys.executable, "-m", "serving.kserve_layout", *sys.argv[1:]], env)
