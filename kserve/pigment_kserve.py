"""pigment on KServe's own Python model server: the command line of serving/kserve_native.py.

    .venv-kserve/bin/python kserve/pigment_kserve.py --checkpoint runs/demo/best_model.pth            # 0.0.0.0:8080
"""

import os
import sys
from pathlib import Path

# Run the package's module with the repository root importable, keeping the caller's working directory (paths in
# the arguments are relative to it); exec, so signals and the exit status are the module's own.
ROOT = str(Path(__file__).resolve().parents[1])
env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH"))))}
os.execve(sys.executable, [sys.executable, "-m", "serving.kserve_native", *sys.argv[1:]], env)
