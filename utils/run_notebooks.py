"""The main job: run the five notebooks at full length with papermill, in place, then
regenerate every Result block and README table from the saved results.

    python -m utils.run_notebooks                 # all five, two at a time
    python -m utils.run_notebooks 05_final        # just one (name or path)

The notebooks are independent, so they run side by side, one thread each (the count the
committed histories were made with), as many at once as the machine has cores. A notebook is
executed into a temporary copy and only replaces the saved one when it
finished, so a failed or interrupted run never destroys the outputs already committed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import torch

from . import batch, report
from .data import ensure_mnist
from .executors import LocalPool, git_commit, lanes
from .experiment import machine_description
from .notebook_run import execute_notebook
from .repro import cpu_info, pin_isa
from .results import load_results, save_json
from .paths import REPO, relative

NOTEBOOKS = [REPO / "notebooks" / f"{name}.ipynb" for name in report.STEPS]
LOGS = REPO / "runs" / "main"  # per notebook: output.log, kernel.log, progress.json
# A notebook never run yet is expected to take this long (steps 3-4's dropout net, the slowest).
UNMEASURED_SECONDS = 400.0


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


def execute_in_place(notebook: str, threads: int, run_dir: str, batch_id: str = "") -> dict:
    """Run one notebook (in a worker process) into a temporary copy; replace the saved notebook
    only when the run finished. Logs and progress go to ``run_dir``."""
    notebook = Path(notebook)
    partial = notebook.with_name(f".{notebook.stem}.running.ipynb")
    start = time.perf_counter()
    record = execute_notebook(str(notebook), str(partial), {}, threads, run_dir, batch_id=batch_id)
    if record["status"] == "ok":
        os.replace(partial, notebook)
    shown = notebook if record["status"] == "ok" else partial
    return {**record, "run": notebook.stem, "notebook": relative(shown),
            "seconds": round(time.perf_counter() - start, 1)}


def plan(paths: list[Path], jobs: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """``(notebooks side by side, threads each)``: one thread each, the count the committed histories
    were made with (a CPU run repeats bit for bit only with it), as many at once as the cores hold."""
    threads = 1
    return jobs or lanes(len(paths), threads, cores), threads


def expected_seconds(path: Path, results_dir: Path = REPO / "results") -> float:
    """How long a notebook's training takes, as its saved results record it (every run updates them)."""
    try:
        return float(sum(row["seconds"] for row in load_results(results_dir / f"{path.stem}.json")["history"]))
    except (OSError, ValueError, KeyError, TypeError):
        return UNMEASURED_SECONDS


def makespan(seconds: list[float], jobs: int) -> float:
    """When the last of these runs ends if each starts, in this order, on the first lane to be free."""
    free = [0.0] * jobs
    for s in seconds:
        free[free.index(min(free))] += s
    return max(free)


def start_order(expected: dict[str, float], jobs: int) -> list[str]:
    """The order to start runs in so that the last one ends soonest: every order is simulated (five
    notebooks: 120), ties going to longest first. Longest first alone can leave three runs on one lane
    and two long ones on the other, ending later than a shorter run started second would."""
    longest_first = sorted(expected, key=lambda name: -expected[name])
    if jobs >= len(expected) or len(expected) > 8:  # nothing to choose, or too many orders to try
        return longest_first
    return list(min(itertools.permutations(longest_first), key=lambda o: makespan([expected[n] for n in o], jobs)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run the notebooks at full length, in place.")
    parser.add_argument("notebooks", nargs="*", help="names such as 05_final (default: all five)")
    parser.add_argument("--jobs", type=int, help="notebooks side by side (default: as many as the cores hold, "
                        "one thread each, at most the notebooks run)")
    args = parser.parse_args(argv)
    paths = resolve(args.notebooks)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    pin_isa()  # before this process's first torch operation; the kernels inherit it
    ensure_mnist(REPO / "data")
    jobs, threads = plan(paths, args.jobs)
    print(f"running {len(paths)} notebooks, {jobs} at a time with {threads} thread(s) each; "
          f"logs under {LOGS.relative_to(REPO)}/", flush=True)
    expected = {p.stem: expected_seconds(p) for p in paths}
    by_name = {p.stem: p for p in paths}
    order = [by_name[name] for name in start_order(expected, jobs)]
    print(f"start order {', '.join(p.stem for p in order)}: the last expected to end after "
          f"{makespan([expected[p.stem] for p in order], jobs):.0f} s of training", flush=True)
    tasks = [dict(name=p.stem, run_dir=LOGS / p.stem, epochs=15, fn=execute_in_place,
                  kwargs=dict(notebook=str(p), threads=threads, run_dir=str(LOGS / p.stem))) for p in order]
    start = time.perf_counter()
    executor = LocalPool(jobs)
    records = batch.run_pool(tasks, executor, "main job")
    executor.close()
    wall = time.perf_counter() - start
    failed = [r for r in records if r["status"] != "ok"]
    for r in failed:
        print(f"{r['run']} failed: {r['error']}; the saved notebook is untouched, the partial run is "
              f"{r['notebook']}", file=sys.stderr)
    if len(paths) == len(NOTEBOOKS) and not failed:  # the whole main job: keep its timing for the README
        final = load_results(REPO / "results" / "05_final.json")
        save_json(REPO / "results" / "main_job.json",
                  dict(wall_seconds=round(wall, 1), jobs=jobs, threads_per_notebook=threads,
                       machine=machine_description(torch.device("cpu")), cpu=cpu_info(),
                       final=dict(arch=final["config"]["arch"], params=final["params"]), commit=git_commit(),
                       notebooks={r["run"]: r["seconds"] for r in records}))
    report.main(REPO)
    print(f"main job: {len(records) - len(failed)} of {len(paths)} notebooks ran in {wall:.0f} s wall time",
          flush=True)
    return 1 if failed or len(records) < len(paths) else 0


if __name__ == "__main__":
    sys.exit(main())
