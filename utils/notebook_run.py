"""One headless notebook run: papermill in this process, the kernel's output kept in logs, the
per-epoch progress as it comes, a kernel that fails to start tried again.

Used by the batch runner on this machine and on Dask workers alike (``utils.executors``), and by
the main job. ``utils.fit`` in the kernel writes each finished epoch to the run folder's
``progress.json``; a local runner reads that file, and on a Dask worker each new epoch goes to a
``report(epoch, test_acc)`` callable that the caller picks.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import papermill as pm

from .experiment import SMOKE_ENV
from .repro import pin_isa
from .train import NO_BARS_ENV, PROGRESS_ENV, read_epochs

PROGRESS_FILE = "progress.json"
# Marks every kernel a batch starts, so that stopping the batch can find and end them all.
BATCH_ENV = "MNIST_BATCH_ID"
# A kernel that dies before it answers (seen: two kernels picking the same free TCP port at the
# same moment, "zmq.error.ZMQError: Address already in use") is started again, with new ports.
KERNEL_START_ATTEMPTS = 3
KERNEL_START_FAILURES = ("Kernel died before replying to kernel_info", "Kernel didn't respond",
                         "Address already in use")


class KernelOutput:
    """A file-like sink for a notebook's stdout (papermill's ``stdout_file``): it keeps the text in
    ``output.log``, and after each piece of output (and at the end) passes every newly finished
    epoch, which ``utils.fit`` adds to ``progress.json`` (``PROGRESS_ENV``), to
    ``report(epoch, test_acc)`` if one is given: each epoch once, in order, none skipped."""

    def __init__(self, run_dir: Path, report=None):
        # Absolute: papermill changes the working directory to the notebook's while it runs.
        self.run_dir = Path(run_dir).resolve()
        self.report, self.reported = report, 0
        self.log = open(self.run_dir / "output.log", "w")  # noqa: SIM115 - closed by close()

    def write(self, text: str) -> None:
        self.log.write(text)
        self._report_new_epochs()

    def _report_new_epochs(self) -> None:
        if self.report is None:
            return
        for row in read_progress(self.run_dir):
            if row["epoch"] > self.reported:
                self.reported = row["epoch"]
                self.report(row["epoch"], row["test_acc"])

    def flush(self) -> None:
        self.log.flush()

    def close(self) -> None:
        self._report_new_epochs()  # an epoch written after the last line of output
        self.log.close()


def read_progress(run_dir: Path) -> list[dict]:
    """Every epoch the run in ``run_dir`` has finished so far, ``[{epoch, test_acc}, ...]`` ([] before the first)."""
    return read_epochs(Path(run_dir) / PROGRESS_FILE)


def kernel_failed_to_start(exc: BaseException) -> bool:
    return not isinstance(exc, pm.PapermillExecutionError) and any(s in str(exc) for s in KERNEL_START_FAILURES)


def execute_notebook(notebook: str, output: str, parameters: dict, threads: int, run_dir: str,
                     report=None, batch_id: str = "", cwd: str | None = None) -> dict:
    """Run one notebook with papermill in this process; never raises for the run's own errors.

    The kernel gets ``threads`` threads, the AVX2 ceiling (``utils.repro``), no progress bars and
    the batch's marker; its own stderr (e.g. jupyter's "running over TCP" warning) goes to
    ``run_dir/kernel.log``. A kernel that dies before it answers is started again, up to
    ``KERNEL_START_ATTEMPTS`` times in all.
    """
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the kernel, as is all below
    os.environ[NO_BARS_ENV] = "1"
    os.environ[BATCH_ENV] = batch_id
    os.environ[PROGRESS_ENV] = str((Path(run_dir) / PROGRESS_FILE).resolve())
    os.environ.pop(SMOKE_ENV, None)
    pin_isa()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PROGRESS_FILE).unlink(missing_ok=True)
    for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
        outcome = _execute_once(notebook, output, parameters, run_dir, report, cwd or str(Path(notebook).parent))
        if outcome.get("kernel_start_failed") and attempt < KERNEL_START_ATTEMPTS:
            print(f"{run_dir.name}: the kernel died before it answered (attempt {attempt}); starting it again",
                  file=sys.stderr, flush=True)
            time.sleep(attempt)  # let the clashing kernel take its ports first
            continue
        outcome.pop("kernel_start_failed", None)
        return {**outcome, "kernel_starts": attempt}


def _execute_once(notebook, output, parameters, run_dir: Path, report, cwd) -> dict:
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    watcher = KernelOutput(run_dir, report)
    try:
        with open(run_dir / "kernel.log", "a") as kernel_log:
            os.dup2(kernel_log.fileno(), 2)  # the kernel process inherits this descriptor
            pm.execute_notebook(notebook, output, parameters=parameters, cwd=cwd,
                                progress_bar=False, kernel_name="python3", stdout_file=watcher)
    except pm.PapermillExecutionError as exc:
        return {"status": "failed", "error": f"{exc.ename}: {exc.evalue}"}
    except Exception as exc:  # noqa: BLE001 - e.g. a dead kernel: report, let others go on
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                "kernel_start_failed": kernel_failed_to_start(exc)}
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        watcher.close()
    return {"status": "ok"}


def execute(notebook: str, run_dir: str, parameters: dict, threads: int, report=None, batch_id: str = "",
            cwd: str | None = None) -> dict:
    """One run of a batch: execute into ``run_dir`` and read its results JSON into a record."""
    run_dir = Path(run_dir)
    output = run_dir / Path(notebook).name
    parameters = {**parameters, "results_dir": str(run_dir), "images_dir": str(run_dir / "images")}
    start = time.perf_counter()
    outcome = execute_notebook(notebook, str(output), parameters, threads, str(run_dir), report, batch_id, cwd)
    if outcome["status"] == "ok":
        results = read_results(run_dir)
        if results:
            outcome.update(run_record(results))
        else:
            outcome = {"status": "failed", "error": "the notebook wrote no results JSON"}
    return {**outcome, "seconds": round(time.perf_counter() - start, 1)}


def read_results(run_dir: Path) -> dict | None:
    """The results JSON a run wrote into its folder (the first besides the progress file), or None."""
    results = sorted(p for p in Path(run_dir).glob("*.json") if p.name != PROGRESS_FILE)
    return json.loads(results[0].read_text()) if results else None


def run_record(res: dict) -> dict:
    """The figures of one run kept in a batch summary, from its results JSON. The full config
    (model, recipe) comes along, so a study's table can say what each run was."""
    s = res["summary"]
    return {"params": res["params"], "final_test_acc": s["final_test_acc"],
            "last_min_test_acc": s["last_min_test_acc"], "best_test_acc": s["best_test_acc"],
            "holds_bar": s["holds_bar"], "epochs": s["epochs"],
            "seconds_per_epoch": round(statistics.median(r["seconds"] for r in res["history"]), 2),
            "test_acc": [round(r["test_acc"], 2) for r in res["history"]],
            # per epoch where the run recorded them: the test loss, and the live model on its training batches,
            # which says beside the test figures whether a net fits the training digits better than it generalizes
            **{key: [round(r[key], digits) for r in res["history"]]
               for key, digits in (("test_loss", 5), ("train_acc", 2), ("train_loss", 5)) if key in res["history"][0]},
            "config": res["config"],
            **({"averages": averages(res["history"])} if "averages" in res["history"][0] else {}),
            **({"averaged_bn": {key: [round(r["averaged_bn"][key], digits) for r in res["history"]]
                                for key, digits in (("test_acc", 2), ("test_loss", 5))}}
               if "averaged_bn" in res["history"][0] else {}),
            **({"cpu": res["cpu"]} if "cpu" in res else {})}


def averages(history: list[dict]) -> dict:
    """Per extra average of a run (``fit``'s ``extra_ema_decays``): its test accuracies and losses."""
    return {decay: {"test_acc": [round(r["averages"][decay]["test_acc"], 2) for r in history],
                    "test_loss": [round(r["averages"][decay]["test_loss"], 5) for r in history]}
            for decay in history[0]["averages"]}


def stop_kernels(batch_id: str) -> list[int]:
    """End every process below this one that a run of batch ``batch_id`` started (its kernels:
    jupyter starts them in a process group of their own, so Ctrl-C never reaches them). Returns their pids."""
    import psutil

    stopped = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.environ().get(BATCH_ENV) == batch_id:
                proc.kill()
                stopped.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return stopped
