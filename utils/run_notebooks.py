"""The main job: run the five notebooks at full length with papermill, in place, then
regenerate every Result block and README table from the saved results.

    python -m utils.run_notebooks                 # all five
    python -m utils.run_notebooks 05_final        # just one (name or path)

A notebook is executed into a temporary copy and only replaces the saved one when it
finished, so a failed or interrupted run never destroys the outputs already committed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import papermill as pm

from . import report
from .data import ensure_mnist
from .experiment import SMOKE_ENV

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = [REPO / "notebooks" / f"{name}.ipynb" for name in report.STEPS]


def resolve(names: list[str]) -> list[Path]:
    if not names:
        return NOTEBOOKS
    by_name = {p.stem: p for p in NOTEBOOKS}
    paths = []
    for name in names:
        stem = Path(name).stem
        if stem not in by_name:
            raise SystemExit(f"unknown notebook {name!r}; choose from {', '.join(by_name)}")
        paths.append(by_name[stem])
    return paths


def run_in_place(notebook: Path, parameters: dict | None = None) -> None:
    partial = notebook.with_name(f".{notebook.stem}.running.ipynb")
    try:
        pm.execute_notebook(notebook, partial, parameters=parameters or {}, cwd=notebook.parent,
                            log_output=True, progress_bar=True, kernel_name="python3")
    except BaseException:
        print(f"{notebook.name} failed; the saved notebook is untouched, the partial run is {partial}",
              file=sys.stderr)
        raise
    os.replace(partial, notebook)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run the notebooks at full length, in place.")
    parser.add_argument("notebooks", nargs="*", help="names such as 05_final (default: all five)")
    args = parser.parse_args(argv)
    paths = resolve(args.notebooks)
    # papermill logs the notebooks' output (the per-epoch lines) at INFO: show it while it runs.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.pop(SMOKE_ENV, None)  # the main job is always full length
    ensure_mnist(REPO / "data")
    for i, path in enumerate(paths, 1):
        print(f"\n=== [{i}/{len(paths)}] {path.name} ===", flush=True)
        start = time.perf_counter()
        run_in_place(path)
        print(f"=== {path.name} done in {time.perf_counter() - start:.0f} s ===", flush=True)
    report.main(REPO)
    return 0


if __name__ == "__main__":
    sys.exit(main())
