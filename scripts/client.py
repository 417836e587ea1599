"""Send 1 to 3 lesion images to a running pigment TorchServe: the command line of serving/client.py.

    python scripts/client.py --clinical lesion.jpg [--dermoscopy derm.jpg] [--multispectral ms.png] [--json|--grpc]
"""

import os
import sys
from pathlib import Path

# Run the package's module with the repository root importable, keeping the caller's working directory (paths in
# the arguments are relative to it); exec, so signals and the exit status are the module's own.
ROOT = str(Path(__file__).resolve().parents[1])
env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH"))))}
os.execve(sys.executable, [sys.executable, "-m", "serving.client", *sys.argv[1:]], env)
