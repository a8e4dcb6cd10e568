"""Export a trained model as a self-contained ``torch.export`` program (.pt2)."""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import torch


def export_model(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Save ``model`` (eval mode, CPU) for ``(N, 1, 28, 28)`` inputs with any batch size N.

    The file loads with ``torch.export.load(path).module()`` and needs none of this project's code.
    """
    model = copy.deepcopy(model).cpu().eval()
    example = (torch.zeros(2, 1, 28, 28),)
    program = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp.pt2")
    os.close(fd)
    try:
        torch.export.save(program, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the model is meant to be shared
        os.replace(tmp, path)  # atomic: a failed export never replaces a good file
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
