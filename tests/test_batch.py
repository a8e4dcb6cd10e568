"""The batch runner on a tiny configuration: real papermill runs of a small notebook."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import nbformat
import psutil
import pytest

from utils import batch
from utils.notebook_run import PROGRESS_FILE, KernelOutput, read_progress

def test_two_seeds_two_run_folders_and_summary(tiny_notebook, tmp_path):
    out = tmp_path / "runs"
    summary = batch.run_batch(tiny_notebook, [0, 1], [["epochs", "6"]], jobs=2, out_dir=out,
                              summary_path=tmp_path / "seeds.json", plot_path=tmp_path / "seeds.png")
    runs = sorted(p.name for p in (out / "tiny").iterdir() if p.is_dir())
    assert runs == ["seed0", "seed1"]
    for name in runs:
        assert (out / "tiny" / name / "tiny.ipynb").is_file()
        assert (out / "tiny" / name / "tiny.json").is_file()
    assert summary["finished"] == 2 and summary["failed"] == 0
    first = summary["runs"][0]
    for key in ("final_test_acc", "last_min_test_acc", "best_test_acc", "seconds", "holds_bar"):
        assert key in first
    assert first["epochs"] == 6
    assert first["train_acc"] == [99.0] * 6 and "train_loss" not in first  # kept as the run recorded them
    assert first["last_min_test_acc"] == pytest.approx(99.32)  # epochs 2..6 of seed 0
    assert summary["holding_bar"] == 1  # seed 1 holds (>= 99.41), seed 0 does not
    assert set(summary["final_test_acc"]) == {"mean", "std"}
    assert json.loads((tmp_path / "seeds.json").read_text()) == json.loads(
        (out / "tiny" / "summary.json").read_text())
    assert (tmp_path / "seeds.png").stat().st_size > 0


def test_output_shows_runs_and_not_the_kernels_tcp_warnings(tiny_notebook, tmp_path, capfd, monkeypatch):
    # A relative --out from another folder: papermill runs in the notebook's folder, files must not follow it.
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    batch.run_batch(tiny_notebook, [0], [["epochs", "3"]], out_dir="runs")
    tmp_path = tmp_path / "elsewhere" / "runs"
    out, err = capfd.readouterr()
    assert "seed0 done in" in out + err
    assert "without encryption" not in out + err
    run_dir = tmp_path / "tiny" / "seed0"
    assert "epoch  3" in (run_dir / "output.log").read_text()
    assert (run_dir / "kernel.log").is_file()
    assert read_progress(run_dir) == [{"epoch": 1, "test_acc": 99.31}, {"epoch": 2, "test_acc": 99.32},
                                      {"epoch": 3, "test_acc": 99.33}]


def test_kernel_output_is_logged_and_each_new_epoch_reported_once(tmp_path, monkeypatch):
    from utils.train import PROGRESS_ENV, report_progress

    monkeypatch.setenv(PROGRESS_ENV, str(tmp_path / PROGRESS_FILE))
    seen = []
    output = KernelOutput(tmp_path, report=lambda epoch, acc: seen.append((epoch, acc)))
    output.write("device: cpu\n")
    assert read_progress(tmp_path) == [] and seen == []
    report_progress(1, 97.5)
    output.write("epoch  1 ...\n")
    output.write("more text\n")  # the same epoch: not reported again
    report_progress(2, 98.254)
    output.write("epoch  2 ...\n")
    output.close()
    assert seen == [(1, 97.5), (2, 98.25)]
    assert read_progress(tmp_path) == [{"epoch": 1, "test_acc": 97.5}, {"epoch": 2, "test_acc": 98.25}]
    assert "device: cpu" in (tmp_path / "output.log").read_text()


def test_epochs_finished_between_two_pieces_of_output_are_all_reported_in_order(tmp_path, monkeypatch):
    from utils.train import PROGRESS_ENV, report_progress

    monkeypatch.setenv(PROGRESS_ENV, str(tmp_path / PROGRESS_FILE))
    seen = []
    output = KernelOutput(tmp_path, report=lambda epoch, acc: seen.append(epoch))
    report_progress(1, 97.5)
    report_progress(2, 98.0)  # two epochs before the kernel's output reaches the runner
    output.write("epoch  1 ...\nepoch  2 ...\n")
    report_progress(3, 98.5)  # the last epoch, after the last line: reported when the output closes
    assert seen == [1, 2]
    output.close()
    assert seen == [1, 2, 3]


class ThreeEpochsAtOnce:
    """An executor whose one run has finished three epochs by the display's first look, then ends."""

    def __init__(self):
        self.looks = 0

    def submit(self, task):
        from concurrent.futures import Future

        self.future = Future()
        return self.future

    def progress(self, task):
        self.looks += 1
        if self.looks > 1:
            self.future.set_result({"status": "ok", "seconds": 1.0})
        return [dict(epoch=e, test_acc=99.0 + e / 100) for e in (1, 2, 3)]

    def collect(self, task, future):
        return future.result()


def test_the_runner_shows_every_epoch_that_came_between_two_looks(tmp_path, capsys):
    task = dict(name="seed0", run_dir=tmp_path, epochs=3, kwargs={})
    records = batch.run_pool([task], ThreeEpochsAtOnce(), "test")
    assert records[0]["status"] == "ok"
    lines = [line for line in capsys.readouterr().out.splitlines() if ": epoch" in line]
    assert lines == ["seed0: epoch 1/3, test 99.01 %", "seed0: epoch 2/3, test 99.02 %",
                     "seed0: epoch 3/3, test 99.03 %"]


def test_a_run_that_starts_again_overwrites_its_later_epochs(tmp_path, monkeypatch):
    from utils.train import PROGRESS_ENV, report_progress

    monkeypatch.setenv(PROGRESS_ENV, str(tmp_path / PROGRESS_FILE))
    for epoch in (1, 2, 3, 1, 2):
        report_progress(epoch, 90.0 + epoch)
    assert [row["epoch"] for row in read_progress(tmp_path)] == [1, 2]


def test_a_failing_run_is_reported_and_the_other_finishes(tiny_notebook, tmp_path):
    summary = batch.run_batch(tiny_notebook, [0, 1], [["fail_on_seed", "0"]], out_dir=tmp_path)
    failed, ok = summary["runs"]
    assert failed["status"] == "failed" and "boom on seed 0" in failed["error"]
    assert failed["notebook"].endswith("seed0/tiny.ipynb")
    assert ok["status"] == "ok" and summary["finished"] == 1 and summary["failed"] == 1


def test_grid_names_runs_by_varying_parameters(tiny_notebook):
    runs = batch.plan_runs(tiny_notebook, [0, 1], [["lr", "0.05", "0.1"], ["epochs", "3"]])
    assert [r["name"] for r in runs] == ["lr=0.05_seed0", "lr=0.05_seed1", "lr=0.1_seed0", "lr=0.1_seed1"]
    assert runs[0]["parameters"] == {"lr": 0.05, "epochs": 3, "seed": 0}


@pytest.mark.parametrize("seeds, grid, message", [
    ([], [], "no seeds"),
    ([0], [["momentum", "0.9"]], "unknown parameter 'momentum'"),
    ([0], [["epochs", "three"]], "'three' is not of type int"),
    ([0], [["epochs", "2.5"]], "is not of type int"),
    ([0], [["lr", "fast"]], "is not of type float"),
    ([0], [["seed", "3"]], "set by the runner"),
])
def test_bad_input_is_rejected_before_anything_runs(tiny_notebook, tmp_path, seeds, grid, message):
    with pytest.raises(ValueError, match=message):
        batch.run_batch(tiny_notebook, seeds, grid, out_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_bad_model_setting_rejected_before_any_run(tmp_path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('seed = 0\narch = "twopool"\ndropout = 0.0\nresults_dir = "r"\nimages_dir = "i"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match="arch must be one of"):  # the second grid value: nothing ran for the first
        batch.run_batch(path, [0], [["arch", "twopool", '"nope"']], out_dir=tmp_path / "runs")
    with pytest.raises(ValueError, match="dropout must be in"):
        batch.run_batch(path, [0], [["dropout", "1.5"]], out_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("grid, message", [
    ([["clean_from", "11", "16"]], "between 1 and 15"),
    ([["epochs", "15", "8"], ["clean_from", "10"]], "between 1 and 8"),  # checked against each point's epochs
    ([["clean_from", "0"]], "clean_from"),
])
def test_clean_from_checked_for_every_grid_point_before_any_run(grid, message, tmp_path):
    notebook = batch.REPO / "notebooks" / "05_final.ipynb"
    with pytest.raises(ValueError, match=message):
        batch.run_batch(notebook, [0], grid, out_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_unknown_notebook(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        batch.plan_runs(tmp_path / "nope.ipynb", [0], [])


def test_cli_reports_bad_input_as_usage_error(tiny_notebook, capsys):
    with pytest.raises(SystemExit) as exit_info:
        batch.main([str(tiny_notebook), "--seeds", "0", "-p", "bogus", "1"])
    assert exit_info.value.code == 2
    assert "unknown parameter 'bogus'" in capsys.readouterr().err


def test_tuple_values_reach_the_notebook_as_lists(tiny_notebook):
    run = batch.plan_runs(tiny_notebook, [0], [["shape", "(1, 2)"]])[0]
    assert run["parameters"]["shape"] == [1, 2]


@pytest.mark.parametrize("name, value, message", [
    ("batch_size", "0", "batch_size must be an integer >= 1"),
    ("epochs", "16", "epochs must be an integer between 1 and 15"),
    ("lr", "-1", r"lr must be in \(0, 10\)"),
    ("device", "tpu", "unknown device 'tpu'"),
    ("train_limit", "0", "train_limit must be None or an integer >= 1"),
])
def test_bad_run_setting_rejected_before_any_run(name, value, message, tmp_path):
    notebook = batch.REPO / "notebooks" / "01_skeleton.ipynb"
    with pytest.raises(ValueError, match=message):  # the first grid value is fine: nothing ran for it
        batch.run_batch(notebook, [0], [[name, *(["3"] if name == "epochs" else []), value]],
                        out_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_a_kernel_that_dies_at_start_is_started_again(tiny_notebook, tmp_path, monkeypatch):
    from utils import notebook_run

    real, calls = notebook_run.pm.execute_notebook, []

    def first_start_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # what a port clash looks like from papermill
            raise RuntimeError("Kernel died before replying to kernel_info")
        return real(*args, **kwargs)

    monkeypatch.setattr(notebook_run.pm, "execute_notebook", first_start_fails)
    record = notebook_run.execute(str(tiny_notebook), str(tmp_path / "seed0"), {"seed": 0, "epochs": 2}, 1)
    assert record["status"] == "ok" and record["kernel_starts"] == 2 and len(calls) == 2
    assert record["test_acc"] == [99.31, 99.32]


def test_a_failing_cell_is_not_retried(tiny_notebook, tmp_path):
    from utils import notebook_run

    record = notebook_run.execute(str(tiny_notebook), str(tmp_path / "seed0"), {"seed": 0, "fail_on_seed": 0}, 1)
    assert record["status"] == "failed" and record["kernel_starts"] == 1


def test_kernels_get_the_isa_ceiling_and_results_record_it(tmp_path, monkeypatch):
    from utils import notebook_run, repro

    for name in repro.ISA_CEILING:
        monkeypatch.delenv(name, raising=False)
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('seed = 0\nresults_dir = "r"\nimages_dir = "i"')
    params.metadata["tags"] = ["parameters"]
    probe = nbformat.v4.new_code_cell(
        f"import sys; sys.path.insert(0, {str(batch.REPO)!r})\n"
        "import json, pathlib, torch\nfrom utils.repro import cpu_info\n"
        "torch.ones(3).sum()\n"
        "pathlib.Path(results_dir, 'cpu.json').write_text(json.dumps(cpu_info()))")
    nb.cells = [params, probe]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "probe.ipynb")
    notebook_run.execute_notebook(str(tmp_path / "probe.ipynb"), str(tmp_path / "out.ipynb"),
                                  {"results_dir": str(tmp_path)}, 1, str(tmp_path / "run"))
    info = json.loads((tmp_path / "cpu.json").read_text())
    assert info["onednn_max_cpu_isa"] == "AVX2" and info["aten_cpu_capability"] == "avx2"
    assert info["mkl_enable_instructions"] == "AVX2"
    assert info["torch_cpu_capability"] in ("AVX2", "DEFAULT")  # never above the ceiling
    assert info["threads"] == 1


@pytest.mark.parametrize("signum, signals", [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGTERM, 2)])
def test_ctrl_c_stops_every_run_and_keeps_the_finished_ones(tiny_notebook, tmp_path, signum, signals):
    """One signal, or a second one while the first is being handled (``kill`` twice, Ctrl-C pressed twice):
    the same clean stop, never a runner left hanging on its worker."""
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(batch.REPO)}
    runner = subprocess.Popen([sys.executable, "-m", "utils.batch", str(tiny_notebook), "--seeds", "0", "1",
                               "-p", "sleep_on_seed", "1", "--jobs", "2", "--threads", "1", "--out", str(out)],
                              cwd=batch.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done, sleeping = out / "tiny" / "seed0" / "tiny.json", out / "tiny" / "seed1" / "output.log"
    lines = []
    for line in runner.stdout:  # one line per event: wait for seed 0 to be reported done
        lines.append(line)
        if "seed0 done" in line:
            break
    assert "seed0 done" in lines[-1], "".join(lines)
    deadline = time.time() + 60
    while not (sleeping.exists() and "sleeping" in sleeping.read_text()):
        assert runner.poll() is None and time.time() < deadline, "".join(lines)
        time.sleep(0.5)
    kernels = [p for p in psutil.Process(runner.pid).children(recursive=True) if "ipykernel" in " ".join(p.cmdline())]
    assert kernels, "the sleeping run's kernel should be alive before Ctrl-C"
    for _ in range(signals):  # back to back: the second comes while the first is being handled
        runner.send_signal(signum)
    output = runner.communicate(timeout=60)[0]
    assert "interrupted: stopped 1 unfinished run(s) (seed1" in output
    _, alive = psutil.wait_procs(kernels, timeout=10)
    assert not alive, f"kernels left running: {alive}"
    assert done.exists()
    summary = json.loads((out / "tiny" / "summary.json").read_text())
    assert [r["run"] for r in summary["runs"]] == ["seed0"] and summary["finished"] == 1


def test_a_log_file_gets_one_line_per_event_and_no_bar(tiny_notebook, tmp_path):
    result = subprocess.run([sys.executable, "-m", "utils.batch", str(tiny_notebook), "--seeds", "0",
                             "-p", "epochs", "2", "--out", str(tmp_path / "runs")], cwd=batch.REPO,
                            env={**os.environ, "PYTHONPATH": str(batch.REPO)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr and "epoch/s" not in result.stderr
    assert "seed0: epoch" in result.stdout or "seed0 done in" in result.stdout


def test_merge_two_invocations_into_one_study(tiny_notebook, tmp_path):
    a = batch.run_batch(tiny_notebook, [0], [["epochs", "5"]], out_dir=tmp_path / "a", summary_path=tmp_path / "a.json")
    b = batch.run_batch(tiny_notebook, [1, 2], [["epochs", "5"]], out_dir=tmp_path / "b",
                        summary_path=tmp_path / "b.json")
    assert batch.main([str(tiny_notebook), "--merge", str(tmp_path / "b.json"), str(tmp_path / "a.json"),
                       "--summary", str(tmp_path / "all.json")]) == 0
    merged = json.loads((tmp_path / "all.json").read_text())
    assert [r["run"] for r in merged["runs"]] == ["seed0", "seed1", "seed2"]  # seed order, whatever ran first
    assert merged["finished"] == 3 and merged["holding_bar"] == a["holding_bar"] + b["holding_bar"]
    assert [p["runs"] for p in merged["merged_from"]] == [["seed1", "seed2"], ["seed0"]]
    with pytest.raises(ValueError, match="share runs"):
        batch.merge_summaries(tiny_notebook, [tmp_path / "a.json", tmp_path / "a.json"], tmp_path / "x.json")


@pytest.mark.parametrize("cores, runs, threads, expected", [
    (1, 5, 1, 1), (2, 5, 1, 2), (8, 5, 1, 5), (8, 10, 1, 8), (8, 10, 2, 4), (8, 1, 1, 1), (2, 3, 4, 1),
])
def test_runs_go_side_by_side_up_to_the_cores(cores, runs, threads, expected):
    from utils.executors import lanes

    assert lanes(runs, threads, cores=cores) == expected


def test_a_batch_defaults_to_one_thread_per_run_and_one_run_per_core(tiny_notebook, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    summary = batch.run_batch(tiny_notebook, [0, 1, 2], [["epochs", "2"]], out_dir=tmp_path)
    assert summary["jobs"] == 3 and summary["threads_per_run"] == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    summary = batch.run_batch(tiny_notebook, [0, 1], [["epochs", "2"]], out_dir=tmp_path / "one")
    assert summary["jobs"] == 1 and summary["finished"] == 2


def test_a_notebook_with_a_threads_parameter_gets_the_runners_count(tmp_path):
    runs = batch.plan_runs(batch.REPO / "notebooks" / "01_skeleton.ipynb", [0], [["epochs", "1"]])
    assert "threads" not in runs[0]["parameters"]  # the runner adds it when it starts them
    with pytest.raises(ValueError, match="set by the runner"):
        batch.plan_runs(batch.REPO / "notebooks" / "01_skeleton.ipynb", [0], [["threads", "2"]])


def test_resume_reads_the_runs_a_stopped_batch_finished_and_runs_the_rest(tiny_notebook, tmp_path, capsys):
    out = tmp_path / "runs"
    first = batch.run_batch(tiny_notebook, [0, 1], [["epochs", "3"]], out_dir=out)
    executed = out / "tiny" / "seed0" / "tiny.ipynb"
    written = executed.stat().st_mtime_ns
    summary = batch.run_batch(tiny_notebook, [0, 1, 2], [["epochs", "3"]], out_dir=out, resume=True,
                              summary_path=tmp_path / "all.json")
    assert "seed0: finished before, read from" in capsys.readouterr().out
    assert executed.stat().st_mtime_ns == written  # read, not run again
    assert [r["run"] for r in summary["runs"]] == ["seed0", "seed1", "seed2"] and summary["finished"] == 3
    assert [r.get("resumed", False) for r in summary["runs"]] == [True, True, False]
    for old, read in zip(first["runs"], summary["runs"]):
        figures = set(old) - {"seconds", "kernel_starts"}  # the rest says how that execution went
        assert {k: read[k] for k in figures} == {k: old[k] for k in figures}
        assert read["seconds"] > 0  # how long it took when it ran


def _change_the_code(notebook, executed):
    nb = nbformat.read(notebook, as_version=4)
    nb.cells[-1].source += "\n# changed"
    nbformat.write(nb, notebook)


def _cut_off(notebook, executed):  # a kill mid-run leaves a copy papermill never finished
    nb = nbformat.read(executed, as_version=4)
    nb.metadata.papermill.end_time = None
    nbformat.write(nb, executed)


@pytest.mark.parametrize("first_grid, change, why", [
    ([["epochs", "3"], ["lr", "0.2"]], None, "other parameters"),
    ([["epochs", "2"]], None, "fewer epochs"),
    ([["epochs", "3"], ["fail_on_seed", "0"]], None, "it failed"),
    ([["epochs", "3"]], _change_the_code, "the notebook's code changed since"),
    ([["epochs", "3"]], _cut_off, "it was cut off"),
])
def test_resume_runs_again_what_an_earlier_batch_did_not_finish_as_planned(tiny_notebook, tmp_path, first_grid,
                                                                          change, why):
    out = tmp_path / "runs"
    batch.run_batch(tiny_notebook, [0], first_grid, out_dir=out)
    if change:
        change(tiny_notebook, out / "tiny" / "seed0" / "tiny.ipynb")
    summary = batch.run_batch(tiny_notebook, [0], [["epochs", "3"]], out_dir=out, resume=True)
    assert summary["finished"] == 1 and "resumed" not in summary["runs"][0], why
    assert summary["runs"][0]["epochs"] == 3


def _makefile_batches() -> list[list[str]]:
    """The arguments of every `$(BATCH) ...` command of the Makefile (continued lines joined)."""
    text = (batch.REPO / "Makefile").read_text().replace("\\\n", " ")
    return [shlex.split(line.split("$(BATCH)", 1)[1]) for line in text.splitlines()
            if line.startswith("\t$(BATCH)")]


def test_every_batch_command_of_the_makefile_passes_the_runners_checks():
    """`make seeds`, `make heldout` and `make ablation` fail only after hours if a parameter is wrong:
    the runner's own checks, run here on each command's seeds and grid, catch it at once."""
    commands = _makefile_batches()
    assert len(commands) >= 4  # seeds, heldout and the ablation rows
    for args in commands:
        seeds, grid, i = [], [], 0
        while i < len(args):
            if args[i] == "--seeds":
                while i + 1 < len(args) and not args[i + 1].startswith("-"):
                    seeds.append(int(args[i + 1]))
                    i += 1
            elif args[i] == "-p":
                grid.append([])
                while i + 1 < len(args) and not args[i + 1].startswith("--") and args[i + 1] != "-p":
                    grid[-1].append(args[i + 1])
                    i += 1
            i += 1
        runs = batch.plan_runs(batch.REPO / "notebooks" / "05_final.ipynb", seeds, grid)
        assert len(runs) == len(seeds), args
