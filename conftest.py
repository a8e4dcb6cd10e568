"""pytest at the repo root: notebooks run by `pytest --nbmake` are smoke runs.

MNIST_SMOKE=1 is inherited by the notebook kernels: they train one epoch and write their
results under runs/smoke/, so the committed full-length results are never overwritten.
"""

import os

os.environ.setdefault("MNIST_SMOKE", "1")
