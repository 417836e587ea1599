"""Start, check and stop a pigment TorchServe on loopback: the command line of serving/torchserve.py.

    python scripts/local_torchserve.py start --model-store model_store --run-dir logs [--free-ports]
    python scripts/local_torchserve.py status --run-dir logs    # exit 0 when the model is READY
    python scripts/local_torchserve.py stop --run-dir logs
"""

import os
import sys
from pathlib import Path

# Run the package's module with the repository root importable, keeping the caller's working directory (paths in
# the arguments are relative to it); exec, so signals and the exit status are the module's own.
ROOT = str(Path(__file__).resolve().parents[1])
env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH"))))}
os.execve(sys.executable, [sys.executable, "-m", "serving.torchserve", *sys.argv[1:]], env)
