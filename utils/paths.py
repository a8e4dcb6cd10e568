"""Where the repository is, and paths as a record or a user should see them: relative to it."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def relative(path: str | os.PathLike, repo: Path = REPO) -> str:
    """``path`` relative to the repository when it lies inside it (a relative path is taken from
    the working directory, which notebooks set to the repository); otherwise as given."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(repo).as_posix()
    except ValueError:
        return str(path)
