"""Rewrite the absolute paths in saved records as paths relative to the repository.

    python -m utils.relative_paths results/*.json

Records made before the runners wrote relative paths name each run's folder as the absolute path
on the machine that ran it (``/home/x/mnist-8k/runs/confirm/05_final/seed0``). The part from the
repository's own top-level folder on (``runs/confirm/05_final/seed0``) is what the path means on
any clone. Only strings that are absolute paths are touched; nothing measured changes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path, PurePosixPath

from .results import save_json

TOP_LEVEL = ("runs", "results", "images", "notebooks", "data")


def relative_path(text: str) -> str:
    """``/any/where/runs/x/y`` -> ``runs/x/y``; anything else as it is."""
    if not text.startswith("/"):
        return text
    parts = PurePosixPath(text).parts
    for i, part in enumerate(parts):
        if part in TOP_LEVEL:
            return str(PurePosixPath(*parts[i:]))
    return text


def convert(value):
    if isinstance(value, dict):
        return {k: convert(v) for k, v in value.items()}
    if isinstance(value, list):
        return [convert(v) for v in value]
    return relative_path(value) if isinstance(value, str) else value


def absolute_paths(value) -> list[str]:
    """Every string in a record that is an absolute path (what a committed record must not hold)."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in absolute_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in absolute_paths(v)]
    return [value] if isinstance(value, str) and value.startswith("/") else []


def main(paths: list[str]) -> int:
    for path in map(Path, paths):
        record = json.loads(path.read_text())
        converted = convert(record)
        if converted != record:
            save_json(path, converted)
            print(f"{path}: {len(absolute_paths(record))} path(s) made relative")
        left = absolute_paths(converted)
        if left:
            print(f"{path}: left as they are (outside the repository): {left}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
