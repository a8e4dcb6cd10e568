"""Run results as JSON: written atomically, summarized the same way everywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .data import atomic_write_bytes

BAR = 99.40  # test accuracy every one of the last epochs must reach
LAST_N = 5


def summarize(history: list[dict], last_n: int = LAST_N, bar: float = BAR) -> dict:
    """The figures a Result block reports, derived from a per-epoch history."""
    if not history:
        raise ValueError("empty history: nothing was trained")
    last = [round(row["test_acc"], 2) for row in history[-last_n:]]
    return dict(
        epochs=len(history),
        best_train_acc=round(max(r["train_acc"] for r in history), 2),
        best_test_acc=round(max(r["test_acc"] for r in history), 2),
        final_test_acc=round(history[-1]["test_acc"], 2),
        last_test_accs=last,
        last_min_test_acc=min(last),
        holds_bar=len(history) >= last_n and min(last) >= bar,
        seconds=round(sum(r["seconds"] for r in history), 1),
    )


def save_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as JSON via temp file + rename: an interrupted run never corrupts a result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(payload, indent=2) + "\n").encode())
    return path


def save_results(path, name: str, config: dict, params: int, history: list[dict], **extra) -> Path:
    payload = dict(name=name, config=config, params=params, summary=summarize(history),
                   history=history, **extra)
    return save_json(path, payload)


def load_results(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())
