"""Batch reruns of a notebook with papermill: seed studies and small parameter grids.

    python -m utils.batch notebooks/05_final.ipynb --seeds 0 1 2 3 4
    python -m utils.batch notebooks/05_final.ipynb --seeds 0 1 -p lr 0.05 0.1 -p epochs 15 --jobs 2

Each run is executed into ``runs/<notebook>/<run name>/`` (git-ignored) together with its
results JSON. The summary (per run and over runs) is printed and saved as
``runs/<notebook>/summary.json`` (and to ``--summary`` if given). A run that raises is
reported with its error and the path of its executed copy; the other runs go on. Ctrl-C
stops launching runs; finished runs and their files stay as they are.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import os
import re
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import papermill as pm
from tqdm.auto import tqdm

from .experiment import SMOKE_ENV
from .results import BAR, LAST_N, save_json
from .train import NO_BARS_ENV, SETTING_CHECKS, check_settings

REPO = Path(__file__).resolve().parents[1]
# Parameters the runner sets itself for every run.
RESERVED = {"seed", "results_dir", "images_dir"}
PROGRESS_FILE = "progress.json"
# Model/recipe parameters checked before any run starts (the notebook checks them again itself).
SETTINGS = {*SETTING_CHECKS, "arch", "dropout_kind"}


def notebook_parameters(notebook: Path) -> dict:
    """The notebook's ``parameters`` cell as ``{name: default value}``."""
    params = pm.inspect_notebook(str(notebook))
    if not params:
        raise ValueError(f"{notebook} has no cell tagged 'parameters'")
    return {name: ast.literal_eval(p["default"]) for name, p in params.items()}


def parse_value(name: str, text: str, default):
    """Read ``text`` as a Python literal of the same type as the notebook's default."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare word: a string
    if isinstance(value, tuple):
        value = list(value)  # papermill writes lists back as Python, but tuples as strings
    if default is None or value is None:  # None means "off" (e.g. ema_decay None); the notebook checks the rest
        return value
    expected = type(default)
    if expected is float and type(value) is int:
        return float(value)
    if type(value) is not expected:
        raise ValueError(f"parameter {name!r}: {text!r} is not of type {expected.__name__} "
                         f"(the notebook's default is {default!r})")
    return value


def plan_runs(notebook: Path, seeds: list[int], grid: list[list[str]]) -> list[dict]:
    """Validate everything and return one ``{name, parameters}`` per run, before anything runs."""
    if not notebook.is_file():
        raise ValueError(f"notebook {str(notebook)!r} not found")
    if not seeds:
        raise ValueError("no seeds: give at least one, e.g. --seeds 0 1 2")
    defaults = notebook_parameters(notebook)
    axes = {}
    for name, *texts in grid:
        if name not in defaults:
            raise ValueError(f"unknown parameter {name!r} for {notebook.name}; "
                             f"its parameters are: {', '.join(defaults)}")
        if name in RESERVED:
            raise ValueError(f"parameter {name!r} is set by the runner itself")
        if not texts:
            raise ValueError(f"parameter {name!r} needs at least one value")
        axes[name] = [parse_value(name, t, defaults[name]) for t in texts]
    runs = []
    for combo in itertools.product(*axes.values()):
        fixed = dict(zip(axes, combo))
        check_settings(**{k: v for k, v in {**defaults, **fixed}.items() if k in SETTINGS})
        for seed in seeds:
            label = "_".join(f"{k}={v}" for k, v in fixed.items() if len(axes[k]) > 1)
            runs.append(dict(name=f"{label}_seed{seed}" if label else f"seed{seed}",
                             parameters={**fixed, "seed": seed}, epochs=fixed.get("epochs", defaults.get("epochs", 1))))
    return runs


class EpochWatcher:
    """A file-like sink for a notebook's stdout (papermill's ``stdout_file``): it keeps the text in
    ``output.log`` and the latest per-epoch line of ``utils.fit`` in ``progress.json``, which the
    parent process reads to show each run's progress while it trains."""

    LINE = re.compile(r"^epoch\s+(\d+)\s.*test loss \S+ acc ([\d.]+)%", re.M)

    def __init__(self, run_dir: Path):
        # Absolute: papermill changes the working directory to the notebook's while it runs.
        run_dir = Path(run_dir).resolve()
        self.progress = run_dir / PROGRESS_FILE
        self.log = open(run_dir / "output.log", "w")  # noqa: SIM115 - closed by close()

    def write(self, text: str) -> None:
        self.log.write(text)
        found = self.LINE.findall(text)
        if found:
            epoch, acc = found[-1]
            save_json(self.progress, dict(epoch=int(epoch), test_acc=float(acc)))

    def flush(self) -> None:
        self.log.flush()

    def close(self) -> None:
        self.log.close()


def read_progress(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None


def execute_notebook(notebook: str, output: str, parameters: dict, threads: int, run_dir: str) -> dict:
    """Run one notebook with papermill in this (worker) process; never raises for the run's own errors.

    The kernel gets ``threads`` threads and no progress bars; its own stderr (e.g. jupyter's
    "running over TCP" warning) goes to ``run_dir/kernel.log``, not to the batch's output.
    """
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the kernel
    os.environ[NO_BARS_ENV] = "1"
    os.environ.pop(SMOKE_ENV, None)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PROGRESS_FILE).unlink(missing_ok=True)
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    watcher = EpochWatcher(run_dir)
    try:
        with open(run_dir / "kernel.log", "w") as kernel_log:
            os.dup2(kernel_log.fileno(), 2)  # the kernel process inherits this descriptor
            pm.execute_notebook(notebook, output, parameters=parameters, cwd=str(Path(notebook).parent),
                                progress_bar=False, kernel_name="python3", stdout_file=watcher)
    except pm.PapermillExecutionError as exc:
        return {"status": "failed", "error": f"{exc.ename}: {exc.evalue}"}
    except Exception as exc:  # noqa: BLE001 - e.g. a dead kernel: report, let others go on
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        watcher.close()
    return {"status": "ok"}


def execute(notebook: str, run_dir: str, parameters: dict, threads: int) -> dict:
    """One run of a batch: execute into ``run_dir`` and read its results JSON into a record."""
    run_dir = Path(run_dir)
    output = run_dir / Path(notebook).name
    parameters = {**parameters, "results_dir": str(run_dir), "images_dir": str(run_dir / "images")}
    shown = {k: _display(v) if k in ("results_dir", "images_dir") else v for k, v in parameters.items()}
    record = dict(run=run_dir.name, parameters=shown, notebook=_display(output))
    start = time.perf_counter()
    outcome = execute_notebook(notebook, str(output), parameters, threads, str(run_dir))
    if outcome["status"] == "ok":
        results = sorted(p for p in run_dir.glob("*.json") if p.name != PROGRESS_FILE)
        if results:
            outcome.update(run_record(json.loads(results[0].read_text())))
        else:
            outcome = {"status": "failed", "error": "the notebook wrote no results JSON"}
    return {**record, **outcome, "seconds": round(time.perf_counter() - start, 1)}


def run_record(res: dict) -> dict:
    """The figures of one run kept in a batch summary, from its results JSON. The full config
    (model, recipe) comes along, so a study's table can say what each run was."""
    s = res["summary"]
    return {"params": res["params"], "final_test_acc": s["final_test_acc"],
            "last_min_test_acc": s["last_min_test_acc"], "best_test_acc": s["best_test_acc"],
            "holds_bar": s["holds_bar"], "epochs": s["epochs"],
            "seconds_per_epoch": round(statistics.median(r["seconds"] for r in res["history"]), 2),
            "test_acc": [round(r["test_acc"], 2) for r in res["history"]], "config": res["config"]}


def _display(path) -> str:
    """A path as the user would type it: relative to the repository when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _mean_std(values):
    if not values:
        return None
    return dict(mean=round(statistics.mean(values), 3),
                std=round(statistics.stdev(values), 3) if len(values) > 1 else 0.0)


def summarize_runs(notebook: Path, records: list[dict], jobs: int = 1, wall_seconds: float = 0.0,
                   threads: int | None = None) -> dict:
    ok = [r for r in records if r["status"] == "ok"]
    return dict(
        notebook=notebook.name, bar=BAR, last_n=LAST_N, jobs=jobs, threads_per_run=threads,
        wall_seconds=round(wall_seconds, 1),
        runs=records,
        finished=len(ok), failed=len(records) - len(ok),
        holding_bar=sum(r["holds_bar"] for r in ok),
        final_test_acc=_mean_std([r["final_test_acc"] for r in ok]),
        last_min_test_acc=_mean_std([r["last_min_test_acc"] for r in ok]),
        best_test_acc=_mean_std([r["best_test_acc"] for r in ok]),
    )


def format_summary(summary: dict) -> str:
    lines = [f"{'run':<28} {'status':<7} {'final':>6} {'min last':>8} {'best':>6} {'seconds':>8}"]
    for r in summary["runs"]:
        if r["status"] == "ok":
            lines.append(f"{r['run']:<28} {'ok':<7} {r['final_test_acc']:>6.2f} {r['last_min_test_acc']:>8.2f} "
                         f"{r['best_test_acc']:>6.2f} {r['seconds']:>8.0f}")
        else:
            lines.append(f"{r['run']:<28} FAILED  {r['error']}\n{'':<28} executed copy: {r['notebook']}")
    for key in ("final_test_acc", "last_min_test_acc", "best_test_acc"):
        if summary[key]:
            lines.append(f"{key}: {summary[key]['mean']:.2f} ± {summary[key]['std']:.2f} %")
    lines.append(f"wall time {summary['wall_seconds']:.0f} s with --jobs {summary['jobs']}")
    lines.append(f"runs holding the bar (each of the last {summary['last_n']} epochs >= {summary['bar']:.2f} %): "
                 f"{summary['holding_bar']} of {summary['finished']} finished ({summary['failed']} failed)")
    return "\n".join(lines)


def run_pool(tasks: list[dict], jobs: int, desc: str, finished: list | None = None) -> list[dict]:
    """Run ``tasks`` (dicts with ``name``, ``run_dir``, ``epochs``, ``fn``, ``args``) in ``jobs``
    worker processes, showing while they run: each running task's epoch and latest test accuracy,
    finished/failed counts and the time left (a bar over all epochs of all tasks).

    Returns the records in the order of ``tasks``; each is also appended to ``finished`` as it
    comes, so a caller still has them after Ctrl-C, which stops launching new tasks.
    """
    finished = [] if finished is None else finished
    records: dict[str, dict] = {}
    shown: dict[str, int] = {}
    bar = tqdm(total=sum(t["epochs"] for t in tasks), desc=desc, unit="epoch", dynamic_ncols=True)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"))
    try:
        futures = {pool.submit(t["fn"], *t["args"]): t for t in tasks}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=2, return_when=FIRST_COMPLETED)
            for future in done:
                task = futures[future]
                records[task["name"]] = record = future.result()
                finished.append(record)
                if record["status"] != "ok":
                    tqdm.write(f"{task['name']} FAILED: {record['error']} (see {record.get('notebook', '')})")
                else:
                    tqdm.write(f"{task['name']} done in {record['seconds']:.0f} s")
            live = []
            for task in tasks:
                if task["name"] in records:
                    continue
                progress = read_progress(task["run_dir"])
                if progress:
                    if progress["epoch"] != shown.get(task["name"]):
                        shown[task["name"]] = progress["epoch"]
                        tqdm.write(f"{task['name']}: epoch {progress['epoch']}/{task['epochs']}, "
                                   f"test {progress['test_acc']:.2f} %")
                    live.append(f"{task['name']} {progress['epoch']}/{task['epochs']} {progress['test_acc']:.2f}%")
            failed = sum(r["status"] != "ok" for r in records.values())
            bar.n = sum(t["epochs"] if t["name"] in records else shown.get(t["name"], 0) for t in tasks)
            bar.set_postfix_str(f"{len(records) - failed} done, {failed} failed"
                                + (f" | {' | '.join(live)}" if live else ""), refresh=False)
            bar.refresh()
    except KeyboardInterrupt:
        tqdm.write("interrupted: no new runs; finished runs are kept")
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown()
    return [records[t["name"]] for t in tasks if t["name"] in records]


def run_batch(notebook, seeds, grid=(), jobs=1, out_dir=REPO / "runs", summary_path=None,
              plot_path=None, threads=None) -> dict:
    notebook = Path(notebook).resolve()
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    runs = plan_runs(notebook, list(seeds), [list(g) for g in grid])
    base = Path(out_dir).resolve() / notebook.stem
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    tasks = [dict(name=r["name"], run_dir=base / r["name"], epochs=r["epochs"],
                  fn=execute, args=(str(notebook), str(base / r["name"]), r["parameters"], threads))
             for r in runs]
    records: list[dict] = []
    start = time.perf_counter()
    try:
        run_pool(tasks, jobs, f"{notebook.stem}: {len(runs)} runs", records)
    finally:
        order = {r["name"]: i for i, r in enumerate(runs)}
        records.sort(key=lambda r: order[r["run"]])
        summary = summarize_runs(notebook, records, jobs, time.perf_counter() - start, threads)
        save_json(base / "summary.json", summary)
        if summary_path:
            save_json(summary_path, summary)
        if plot_path and summary["finished"]:
            from .plots import plot_seed_curves
            curves = {r["run"]: [dict(epoch=i + 1, test_acc=a) for i, a in enumerate(r["test_acc"])]
                      for r in records if r["status"] == "ok"}
            plot_seed_curves(curves, title=f"{notebook.stem}: test accuracy per epoch", path=plot_path)
    print(format_summary(summary))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Rerun a notebook for several seeds / parameter values.")
    parser.add_argument("notebook", help="path of the notebook, e.g. notebooks/05_final.ipynb")
    parser.add_argument("--seeds", type=int, nargs="+", default=[], help="seeds, one run each")
    parser.add_argument("-p", "--param", nargs="+", action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a notebook parameter and one or more values (a grid axis)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--threads", type=int, help="threads per run (default: cores // jobs); set it when "
                        "two batches share the machine")
    parser.add_argument("--out", default=str(REPO / "runs"), help="folder for the runs (default runs/)")
    parser.add_argument("--summary", help="also save the summary JSON here (e.g. results/seeds.json)")
    parser.add_argument("--plot", help="save a test-accuracy-per-epoch plot here (e.g. images/seeds.png)")
    args = parser.parse_args(argv)
    try:
        summary = run_batch(args.notebook, args.seeds, args.param, args.jobs, args.out, args.summary, args.plot,
                            args.threads)
    except ValueError as exc:
        parser.error(str(exc))
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
