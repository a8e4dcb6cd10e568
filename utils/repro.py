"""Repeatable CPU runs: the instruction set a run used, and a ceiling the headless runners pin.

A CPU run repeats bit for bit only with the same thread count *and* the same kernels: oneDNN, ATen
and MKL pick AVX-512 code on CPUs that have it and AVX2 code on those that do not, and the two round
differently. The runners (main job, batch, benchmark) therefore cap all three at AVX2, which every
x86-64 CPU of the last decade has, so that any such machine can reproduce a committed history
exactly. MKL counts too: it computes the augmentation's sampling grids (``affine_grid``), and an
Intel CPU with AVX-512 left uncapped there computes other grids than an AMD CPU, so other histories
(docs/repeatability.md). What the cap costs in speed is measured by ``make bench``
(``results/bench.json``, "isa").

Importing ``utils`` sets the ceiling (before it imports torch), so a notebook whose first cell
imports it repeats the saved runs too, in Jupyter, under plain papermill or nbmake. To run the
CPU's own best kernels instead, set ``MNIST_NATIVE_ISA=1``; a ceiling the user exports
(``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``, ``MKL_ENABLE_INSTRUCTIONS``) is kept as it is. This
module imports no torch at its top, so that ``utils/__init__`` can pin the ceiling first.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# Read by oneDNN (convolutions), ATen (element-wise kernels) and MKL (matrix products) at their
# first use in a process.
ISA_CEILING = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
NATIVE_ENV = "MNIST_NATIVE_ISA"


def pin_isa(environ=os.environ) -> dict:
    """Set the AVX2 ceiling in ``environ`` where the user has not set one; return what is in force.

    Set in a parent process, it reaches the notebook kernels it starts; in the process itself it
    takes effect only before torch's first CPU operation.
    """
    if not environ.get(NATIVE_ENV):
        for name, value in ISA_CEILING.items():
            environ.setdefault(name, value)
    return {name: environ[name] for name in ISA_CEILING if name in environ}


def cpu_name() -> str:
    try:  # Linux names the model here; platform.processor() is often empty
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_info() -> dict:
    """What a CPU history depends on: the CPU, torch's kernel level, the ISA ceiling, the threads."""
    import torch

    return dict(cpu=cpu_name(), torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
                onednn_max_cpu_isa=os.environ.get("ONEDNN_MAX_CPU_ISA", "unset (native)"),
                aten_cpu_capability=os.environ.get("ATEN_CPU_CAPABILITY", "unset (native)"),
                mkl_enable_instructions=os.environ.get("MKL_ENABLE_INSTRUCTIONS", "unset (native)"),
                threads=torch.get_num_threads())
