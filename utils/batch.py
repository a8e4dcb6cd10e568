"""Batch reruns of a notebook with papermill: seed studies and small parameter grids.

    python -m utils.batch notebooks/05_final.ipynb --seeds 0 1 2 3 4
    python -m utils.batch notebooks/05_final.ipynb --seeds 0 1 -p lr 0.05 0.1 -p epochs 15 --jobs 2

Each run is executed into ``runs/<notebook>/<run name>/`` (git-ignored) together with its
results JSON. The summary (per run and over runs) is printed and saved as
``runs/<notebook>/summary.json`` (and to ``--summary`` if given). A run that raises is
reported with its error and the path of its executed copy; the other runs go on. Ctrl-C
stops every run still going (their kernels too); finished runs and their files stay as they are.
With ``--resume`` a batch that was stopped (or killed) picks up where it was: a run whose folder
holds a finished run of the same notebook code with the same parameters is read, not rerun.

With ``--scheduler tcp://HOST:PORT`` the runs go to a Dask cluster instead of this machine's
processes (``utils.executors``); everything else, files under ``--out`` included, is the same.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import signal
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

import nbformat
import papermill as pm
from tqdm.auto import tqdm

from .results import BAR, LAST_N, load_results, save_json
from .recipe import SETTINGS, Recipe
from .train import pick_device
from .notebook_run import read_progress, read_results, run_record
from .paths import REPO, relative

# Parameters the runner sets itself for every run.
RESERVED = {"seed", "results_dir", "images_dir", "threads"}


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


def check_run_point(values: dict, local: bool = True) -> None:
    """Check one grid point's settings (all of them: the notebook's parameters that are recipe
    settings, ``utils.recipe``) before any run: a bad value fails here, not in a kernel 20 s later.
    ``local``: also that this machine has the device (a cluster's workers may have one it lacks)."""
    recipe = Recipe(**{k: v for k, v in values.items() if k in SETTINGS})
    if local and "device" in recipe:
        pick_device(recipe.device)


def plan_runs(notebook: Path, seeds: list[int], grid: list[list[str]], local: bool = True) -> list[dict]:
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
        check_run_point({**defaults, **fixed}, local)
        for seed in seeds:
            label = "_".join(f"{k}={v}" for k, v in fixed.items() if len(axes[k]) > 1)
            runs.append(dict(name=f"{label}_seed{seed}" if label else f"seed{seed}",
                             parameters={**fixed, "seed": seed}, epochs=fixed.get("epochs", defaults.get("epochs", 1))))
    return runs


def run_task(notebook: Path, base: Path, run: dict, threads: int) -> dict:
    """What the executor needs for one planned run, and what the progress display shows."""
    run_dir = base / run["name"]
    return dict(name=run["name"], run_dir=run_dir, epochs=run["epochs"],
                kwargs=dict(notebook=str(notebook), run_dir=str(run_dir), parameters=run["parameters"],
                            threads=threads))


def code_cells(nb) -> list[str]:
    """A notebook's code, without the cell papermill injects for a run's parameters."""
    return [c.source for c in nb.cells
            if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]


def finished_before(notebook: Path, code: list[str], task: dict) -> dict | None:
    """The record of ``task``'s run if an earlier batch finished it in the same folder (``--resume``):
    its executed copy ran to the end without an error, on ``code`` (``notebook``'s code cells) and
    with the same parameters, and its results hold every planned epoch. None: it must run."""
    try:
        executed = nbformat.read(task["run_dir"] / notebook.name, as_version=4)
    except (OSError, ValueError):  # no executed copy yet, or one cut off mid-write
        return None
    meta = executed.metadata.get("papermill", {})
    planned = json.loads(json.dumps({**task["kwargs"]["parameters"], "results_dir": str(task["run_dir"]),
                                     "images_dir": str(task["run_dir"] / "images")}))  # as the copy keeps them
    results = read_results(task["run_dir"])
    if (meta.get("exception") or not meta.get("end_time") or meta.get("parameters") != planned or results is None
            or code_cells(executed) != code
            or results["summary"]["epochs"] != task["epochs"]
            or results.get("cpu", {}).get("threads", task["kwargs"]["threads"]) != task["kwargs"]["threads"]):
        return None
    return {"status": "ok", **run_record(results), "seconds": round(meta["duration"], 1), "resumed": True}


def mean_and_std(values: list[float]) -> dict | None:
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
        final_test_acc=mean_and_std([r["final_test_acc"] for r in ok]),
        last_min_test_acc=mean_and_std([r["last_min_test_acc"] for r in ok]),
        best_test_acc=mean_and_std([r["best_test_acc"] for r in ok]),
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


def run_pool(tasks: list[dict], executor, desc: str, finished: list | None = None) -> list[dict]:
    """Run ``tasks`` (dicts with ``name``, ``run_dir``, ``epochs``, ``kwargs``; see ``run_task``) on
    ``executor`` (``utils.executors``), showing while they run: a line per epoch of each run, one
    per finished or failed run, and on a terminal a bar over all epochs with counts and time left.

    Returns the records in the order of ``tasks``; each is also appended to ``finished`` as it
    comes, so a caller still has them after Ctrl-C, which stops every run still going.
    """
    finished = [] if finished is None else finished
    records: dict[str, dict] = {}
    shown: dict[str, int] = {}
    # Into a file (`> log`) a redrawn bar is noise: there, one line per event and no bar.
    bar = tqdm(total=sum(t["epochs"] for t in tasks), desc=desc, unit="epoch", dynamic_ncols=True,
               disable=not sys.stderr.isatty())

    def show_new_epochs(task: dict, rows: list[dict]) -> None:
        """A line for each epoch of ``rows`` not shown yet, however many came since the last look."""
        for row in rows:
            if row["epoch"] > shown.get(task["name"], 0):
                shown[task["name"]] = row["epoch"]
                tqdm.write(f"{task['name']}: epoch {row['epoch']}/{task['epochs']}, test {row['test_acc']:.2f} %")

    try:
        futures = {executor.submit(t): t for t in tasks}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=2, return_when=FIRST_COMPLETED)
            for future in done:
                task = futures[future]
                records[task["name"]] = record = {"run": task["name"], **executor.collect(task, future)}
                finished.append(record)
                # Epochs the display had not seen yet: the run's own progress file is back in its folder.
                show_new_epochs(task, read_progress(task["run_dir"]))
                if record["status"] != "ok":
                    tqdm.write(f"{task['name']} FAILED: {record['error']} (see {relative(task['run_dir'])})")
                else:
                    tqdm.write(f"{task['name']} done in {record['seconds']:.0f} s")
            live = []
            for task in tasks:
                epochs = [] if task["name"] in records else executor.progress(task)
                show_new_epochs(task, epochs)
                if epochs:
                    latest = epochs[-1]
                    live.append(f"{task['name']} {latest['epoch']}/{task['epochs']} {latest['test_acc']:.2f}%")
            failed = sum(r["status"] != "ok" for r in records.values())
            bar.n = sum(t["epochs"] if t["name"] in records else shown.get(t["name"], 0) for t in tasks)
            bar.set_postfix_str(f"{len(records) - failed} done, {failed} failed"
                                + (f" | {' | '.join(live)}" if live else ""), refresh=False)
            bar.refresh()
    except KeyboardInterrupt:
        running = [t["name"] for t in tasks if t["name"] not in records]
        stopped = executor.stop()
        tqdm.write(f"interrupted: stopped {len(running)} unfinished run(s) ({', '.join(running) or 'none'}; "
                   f"{len(stopped)} kernel(s) ended); the {len(records)} finished run(s) are kept")
        raise
    finally:
        bar.close()
    return [records[t["name"]] for t in tasks if t["name"] in records]


def merge_summaries(notebook: Path, paths: list, summary_path, plot_path=None) -> dict:
    """One study out of several batch summaries of ``notebook`` (a seed study run as two
    invocations, say): the runs of all, the figures over all, and where each part came from."""
    parts = [(Path(p), load_results(p)) for p in paths]
    wrong = [p.name for p, s in parts if s.get("notebook") != Path(notebook).name]
    if wrong:
        raise ValueError(f"not summaries of {Path(notebook).name}: {', '.join(wrong)}")
    # One study reads in seed order, whatever order its parts ran in (a screen on seeds 1, 2, 4,
    # then the rest of 0-9, say).
    records = sorted((r for _, s in parts for r in s["runs"]), key=lambda r: r["parameters"].get("seed", 0))
    names = [r["run"] for r in records]
    if len(set(names)) < len(names):
        raise ValueError(f"the summaries share runs: {sorted({n for n in names if names.count(n) > 1})}")
    summary = summarize_runs(Path(notebook), records, parts[0][1]["jobs"], sum(s["wall_seconds"] for _, s in parts),
                             parts[0][1].get("threads_per_run"))
    summary["merged_from"] = [dict(summary=relative(p), runs=[r["run"] for r in s["runs"]],
                                   jobs=s["jobs"], wall_seconds=s["wall_seconds"]) for p, s in parts]
    save_json(summary_path, summary)
    _plot(records, Path(notebook), plot_path)
    print(format_summary(summary))
    return summary


def _plot(records: list[dict], notebook: Path, plot_path) -> None:
    if plot_path and any(r["status"] == "ok" for r in records):
        from .plots import plot_seed_curves
        curves = {r["run"]: [dict(epoch=i + 1, test_acc=a) for i, a in enumerate(r["test_acc"])]
                  for r in records if r["status"] == "ok"}
        plot_seed_curves(curves, title=f"{notebook.stem}: test accuracy per epoch", path=plot_path)


def run_batch(notebook, seeds, grid=(), jobs=None, out_dir=REPO / "runs", summary_path=None,
              plot_path=None, threads=1, scheduler=None, resume=False) -> dict:
    """Run the notebook once per seed and grid point. ``jobs`` None: as many side by side as this
    machine's cores hold at ``threads`` each (``executors.lanes``); on a cluster its workers decide.
    ``resume``: runs an earlier batch finished under ``out_dir`` are read, not rerun (``finished_before``)."""
    from .executors import DaskPool, LocalPool, lanes

    notebook = Path(notebook).resolve()
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    executor = DaskPool(scheduler) if scheduler else None  # a Dask cluster is reached and checked first
    try:
        runs = plan_runs(notebook, list(seeds), [list(g) for g in grid], local=not scheduler)
    except ValueError:
        if executor:
            executor.close()
        raise
    if "threads" in notebook_parameters(notebook):  # the notebook sets its threads itself, from this
        for run in runs:
            run["parameters"]["threads"] = threads
    base = Path(out_dir).resolve() / notebook.stem
    tasks = [run_task(notebook, base, r, threads) for r in runs]
    records: list[dict] = []
    code = code_cells(nbformat.read(notebook, as_version=4)) if resume else []  # read once, not per run
    for task in tasks if resume else []:
        record = finished_before(notebook, code, task)
        if record:
            records.append({"run": task["name"], **record})
            print(f"{task['name']}: finished before, read from {relative(task['run_dir'])}")
    to_run = [t for t in tasks if t["name"] not in {r["run"] for r in records}]
    jobs = jobs or (1 if scheduler else lanes(len(to_run), threads))
    executor = executor or LocalPool(jobs)
    start = time.perf_counter()
    try:
        run_pool(to_run, executor, f"{notebook.stem}: {len(to_run)} runs", records)
        executor.close()
    finally:
        shown = {t["name"]: dict(run=t["name"], parameters=t["kwargs"]["parameters"],
                                 notebook=relative(t["run_dir"] / notebook.name)) for t in tasks}
        records = [{**shown[r["run"]], **r} for r in records]
        order = {r["name"]: i for i, r in enumerate(runs)}
        records.sort(key=lambda r: order[r["run"]])
        summary = summarize_runs(notebook, records, jobs, time.perf_counter() - start, threads)
        summary["executor"] = f"dask {scheduler}" if scheduler else f"local, {jobs} process(es)"
        save_json(base / "summary.json", summary)
        if summary_path:
            save_json(summary_path, summary)
        _plot(records, notebook, plot_path)
    print(format_summary(summary))
    return summary


def _interrupt(signum, frame):
    # Stopping takes a moment (kernels ended, the summary saved): a second signal (`kill` twice, Ctrl-C
    # pressed twice) must not cut it short and leave a worker, a kernel and the runner waiting on them.
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv=None) -> int:
    # SIGTERM (a job scheduler, `kill`) stops runs as Ctrl-C does; SIGINT too when the shell that
    # started the runner in the background set it to be ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    parser = argparse.ArgumentParser(description="Rerun a notebook for several seeds / parameter values.")
    parser.add_argument("notebook", help="path of the notebook, e.g. notebooks/05_final.ipynb")
    parser.add_argument("--seeds", type=int, nargs="+", default=[], help="seeds, one run each")
    parser.add_argument("-p", "--param", nargs="+", action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a notebook parameter and one or more values (a grid axis)")
    parser.add_argument("--jobs", type=int, help="runs at once on this machine (default: as many as its cores "
                        "hold at --threads each, at most one per run)")
    parser.add_argument("--threads", type=int, default=1, help="threads per run (default 1: the committed "
                        "histories' count; a CPU run repeats only with the same count)")
    parser.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                        help="run on this Dask cluster instead of this machine (README, 'Sweeps on a cluster')")
    parser.add_argument("--out", default=str(REPO / "runs"), help="folder for the runs (default runs/)")
    parser.add_argument("--summary", help="also save the summary JSON here (e.g. results/seeds.json)")
    parser.add_argument("--plot", help="save a test-accuracy-per-epoch plot here (e.g. images/seeds.png)")
    parser.add_argument("--resume", action="store_true", help="read, not rerun, the runs an earlier batch "
                        "finished under --out with the same notebook code and parameters (after a stop or a kill)")
    parser.add_argument("--merge", nargs="+", metavar="SUMMARY", help="run nothing: merge these summaries of the "
                        "notebook (one study run as several invocations) into --summary")
    args = parser.parse_args(argv)
    if args.merge:
        if not args.summary:
            parser.error("--merge needs --summary FILE")
        try:
            merge_summaries(args.notebook, args.merge, args.summary, args.plot)
        except ValueError as exc:
            parser.error(str(exc))
        return 0
    try:
        summary = run_batch(args.notebook, args.seeds, args.param, args.jobs, args.out, args.summary, args.plot,
                            args.threads, args.scheduler, args.resume)
    except ValueError as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:
        return 130
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
