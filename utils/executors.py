"""Where the runs of a batch execute: worker processes on this machine, or a Dask cluster.

Both give the batch runner the same four things: ``submit(task)`` returns a
``concurrent.futures.Future`` of the run's record, ``progress(task)`` every epoch the run has
finished so far (``[{epoch, test_acc}, ...]``), ``collect(task, future)`` the finished record with the run's
files under ``task["run_dir"]``, and ``stop()`` ends every run still going (kernels included).
Planning, progress display and summaries (``utils.batch``) do not know which one they talk to.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from .notebook_run import PROGRESS_FILE, execute, read_progress, stop_kernels
from .paths import REPO
from .train import add_epoch

PROGRESS_TOPIC = "mnist-batch-progress"


def lanes(runs: int, threads: int = 1, cores: int | None = None) -> int:
    """How many runs of ``threads`` threads go side by side: as many as the cores hold, never
    more than there are runs, at least one."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(runs, cores // threads))


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's to handle, not the workers'


class LocalPool:
    """``jobs`` worker processes on this machine, each running one notebook at a time in place."""

    def __init__(self, jobs: int):
        self.batch_id = uuid.uuid4().hex
        self.pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                                        initializer=_ignore_sigint)

    def submit(self, task: dict):
        (Path(task["run_dir"]) / PROGRESS_FILE).unlink(missing_ok=True)  # a rerun's folder: no stale epoch
        return self.pool.submit(task.get("fn", execute), **task["kwargs"], batch_id=self.batch_id)

    def progress(self, task: dict) -> list[dict]:
        return read_progress(task["run_dir"])

    def collect(self, task: dict, future) -> dict:
        return future.result()

    def stop(self) -> list[int]:
        stopped = stop_kernels(self.batch_id)
        for proc in list(getattr(self.pool, "_processes", {}).values()):  # the workers themselves
            proc.kill()
        self.pool.shutdown(wait=False, cancel_futures=True)
        return stopped

    def close(self) -> None:
        self.pool.shutdown()


def git_commit(repo: Path = REPO) -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def worker_identity() -> dict:
    """Runs on each Dask worker: which checkout of the project it imports, at which commit."""
    return dict(repo=str(REPO), commit=git_commit())


def run_on_worker(notebook_name: str, notebook_json: str, name: str, parameters: dict, threads: int,
                  batch_id: str) -> dict:
    """Runs on a Dask worker: execute the notebook (sent as text) in a scratch folder of the
    worker's checkout, report epochs as Dask events, and send every file of the run back."""
    from distributed import get_worker

    worker = get_worker()

    def report(epoch: int, test_acc: float) -> None:
        worker.log_event(PROGRESS_TOPIC, dict(batch=batch_id, run=name, epoch=epoch, test_acc=test_acc))

    with tempfile.TemporaryDirectory(prefix="mnist-run-") as scratch:
        run_dir = Path(scratch) / name
        run_dir.mkdir()
        notebook = Path(scratch) / "input" / notebook_name  # the executed copy keeps the notebook's name
        notebook.parent.mkdir()
        notebook.write_text(notebook_json)
        # The notebook runs from the checkout's notebooks/ folder, as it would locally.
        record = execute(str(notebook), str(run_dir), parameters, threads, report, batch_id,
                         cwd=str(REPO / "notebooks"))
        files = {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    return {**record, "files": files, "worker": worker.address}


class DaskPool:
    """Runs on the Dask cluster whose scheduler is at ``address``; the workers need the project's
    checkout at the same commit (checked here, before anything is submitted) but no shared files."""

    def __init__(self, address: str, timeout: float = 10):
        from distributed import Client

        try:
            self.client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ValueError(f"cannot reach the Dask scheduler at {address!r}: {exc}") from exc
        self.batch_id = uuid.uuid4().hex
        try:
            self._check_workers()
        except ValueError:
            self.client.close()
            raise
        self.epochs: dict[str, list[dict]] = {}
        self.client.subscribe_topic(PROGRESS_TOPIC, self._on_progress)
        # A run is sent to workers as a plain task; the scheduler reruns it elsewhere if its worker dies.
        self.executor = self.client.get_executor(pure=False)

    def _check_workers(self) -> None:
        if not self.client.scheduler_info(n_workers=-1)["workers"]:
            raise ValueError("the Dask cluster has no workers: start some with `dask worker <scheduler address>` "
                             "from the project's checkout (README, 'Sweeps on a cluster')")
        found = {}
        # The scheduler unpacks each run's task too, so it needs the project as much as the workers do.
        for who, ask in (("scheduler", self.client.run_on_scheduler), ("workers", self.client.run)):
            try:
                found.update({who: ask(worker_identity)} if who == "scheduler" else ask(worker_identity))
            except Exception as exc:  # noqa: BLE001 - e.g. "No module named 'utils'" over there
                raise ValueError(f"the Dask {who} cannot import this project ({type(exc).__name__}: {exc}); start "
                                 "them from the repository root with PYTHONPATH=. (README, 'Sweeps on a cluster')"
                                 ) from exc
        mine = git_commit()
        wrong = {w: info for w, info in found.items() if info["commit"] != mine}
        if wrong:
            listed = "; ".join(f"{w}: {i['commit'] or 'no git checkout'} in {i['repo']}" for w, i in wrong.items())
            raise ValueError(f"the Dask cluster runs another commit of the project than this checkout ({mine}): "
                             f"{listed}")

    def _on_progress(self, event) -> None:
        _, msg = event
        if msg.get("batch") == self.batch_id:
            # Kept whole, so that epochs arriving together are all shown; a retried run starts again.
            self.epochs[msg["run"]] = add_epoch(self.epochs.get(msg["run"], []), msg["epoch"], msg["test_acc"])

    def submit(self, task: dict):
        run = task["kwargs"]
        return self.executor.submit(run_on_worker, Path(run["notebook"]).name, Path(run["notebook"]).read_text(),
                                    Path(run["run_dir"]).name, run["parameters"], run["threads"], self.batch_id)

    def progress(self, task: dict) -> list[dict]:
        return list(self.epochs.get(Path(task["run_dir"]).name, []))

    def collect(self, task: dict, future) -> dict:
        """The run's record, its files written under ``run_dir`` here, as a local run leaves them."""
        try:
            record = future.result()
        except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: its worker died on every try
            return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        run_dir = Path(task["run_dir"])
        for rel, payload in record.pop("files").items():
            path = run_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(payload)
        return record

    def stop(self) -> list:
        self.executor.shutdown(wait=False)  # cancels what has not finished
        stopped = self.client.run(stop_kernels, self.batch_id)  # the kernels keep running otherwise
        return [pid for pids in stopped.values() for pid in pids]

    def close(self) -> None:
        self.client.close()
