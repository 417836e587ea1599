"""pigment's training side: datasets, the synthetic benchmark, training, evaluation, single-image inference, export.

Imports from ``model`` only; nothing in ``model`` or ``handler`` imports this package.
"""

import os

# Training often runs on a few CPU cores shared with other work. With OpenMP's default busy-waiting, every small op
# then waits for a descheduled thread (measured here: epochs 10-15x slower); passive waiting avoids that. It must
# be set before torch loads its OpenMP runtime, hence in the package; an explicit environment setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
