"""The batch runner on a Dask cluster: a LocalCluster of two worker processes, reached by
address exactly as ``--scheduler tcp://HOST:PORT`` reaches a real one."""

import json

import dask
import pytest

from utils import batch

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def scheduler():
    # As the README's scheduler command sets it: a run whose worker dies is tried once more.
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def test_two_runs_on_the_cluster_come_back_with_their_files(scheduler, tmp_path):
    out, summary_path = tmp_path / "runs", tmp_path / "summary.json"
    summary = batch.run_batch(batch.REPO / "notebooks" / "01_skeleton.ipynb", [0, 1],
                              [["epochs", "1"], ["train_limit", "2000"]], out_dir=out,
                              summary_path=summary_path, scheduler=scheduler)
    assert summary["finished"] == 2 and summary["failed"] == 0, summary["runs"]
    assert summary["executor"] == f"dask {scheduler}"
    for seed in (0, 1):
        run_dir = out / "01_skeleton" / f"seed{seed}"
        for name in ("01_skeleton.ipynb", "01_skeleton.json", "output.log", "kernel.log",
                     "images/01_skeleton_curves.png"):
            assert (run_dir / name).is_file(), name
        saved = json.loads((run_dir / "01_skeleton.json").read_text())
        assert saved["config"]["seed"] == seed and len(saved["history"]) == 1
        assert "epoch  1" in (run_dir / "output.log").read_text()
    assert json.loads(summary_path.read_text())["runs"][1]["run"] == "seed1"


def test_a_failing_run_on_the_cluster_is_reported_and_the_other_finishes(scheduler, tiny_notebook, tmp_path):
    summary = batch.run_batch(tiny_notebook, [0, 1], [["fail_on_seed", "0"], ["epochs", "3"]],
                              out_dir=tmp_path, scheduler=scheduler)
    failed, ok = summary["runs"]
    assert failed["status"] == "failed" and "boom on seed 0" in failed["error"]
    assert ok["status"] == "ok" and ok["test_acc"] == [99.41, 99.42, 99.43]
    assert (tmp_path / "tiny" / "seed0" / "tiny.ipynb").is_file()  # the failed run's executed copy came back


def test_epochs_of_cluster_runs_are_shown_as_they_come(scheduler, tiny_notebook, tmp_path, capfd):
    summary = batch.run_batch(tiny_notebook, [0], [["epochs", "3"], ["epoch_seconds", "3.0"]],
                              out_dir=tmp_path, scheduler=scheduler)
    assert summary["finished"] == 1
    out = capfd.readouterr().out
    # Every epoch once, in order, though the display looks only every 2 s and events may come together.
    lines = [line for line in out.splitlines() if line.startswith("seed0: epoch")]
    assert lines == ["seed0: epoch 1/3, test 99.31 %", "seed0: epoch 2/3, test 99.32 %",
                     "seed0: epoch 3/3, test 99.33 %"]


def test_an_unreachable_scheduler_fails_before_any_run(tiny_notebook, tmp_path):
    with pytest.raises(ValueError, match="cannot reach the Dask scheduler"):
        batch.run_batch(tiny_notebook, [0], out_dir=tmp_path / "runs", scheduler="tcp://127.0.0.1:9")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name, value", [("batch_size", "0"), ("epochs", "16"), ("lr", "-1"), ("device", "tpu")])
def test_bad_run_settings_fail_before_any_run_on_the_cluster(scheduler, tmp_path, name, value):
    with pytest.raises(ValueError, match=name if name != "device" else "unknown device"):
        batch.run_batch(batch.REPO / "notebooks" / "01_skeleton.ipynb", [0], [[name, value]],
                        out_dir=tmp_path / "runs", scheduler=scheduler)
    assert not (tmp_path / "runs").exists()


def test_a_run_whose_worker_dies_is_retried_once_then_reported(scheduler, tiny_notebook, tmp_path):
    killer = tmp_path / "killer.ipynb"
    text = tiny_notebook.read_text().replace(
        "assert os.environ.get(", "import signal\\n"
        f"marker = pathlib.Path({str(tmp_path)!r}) / f'killed{{seed}}'\\n"
        "if seed == 1 or not marker.exists():\\n"
        "    marker.touch(); os.kill(os.getppid(), signal.SIGKILL)  # the worker running this kernel\\n"
        "assert os.environ.get(")
    killer.write_text(text)
    # One batch each: a worker's death counts against every run queued on it, not just the running one.
    retried = batch.run_batch(killer, [0], [["epochs", "2"]], out_dir=tmp_path / "a", scheduler=scheduler)["runs"][0]
    assert retried["status"] == "ok", retried  # its worker died once; the second try finished
    lost = batch.run_batch(killer, [1], [["epochs", "2"]], out_dir=tmp_path / "b", scheduler=scheduler)["runs"][0]
    assert lost["status"] == "failed" and "KilledWorker" in lost["error"]
