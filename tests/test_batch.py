"""The batch runner on a tiny configuration: real papermill runs of a small notebook."""

import json

import nbformat
import pytest

from utils import batch

TINY = '''import json, os, pathlib
assert os.environ.get("OMP_NUM_THREADS")
if fail_on_seed == seed:
    raise RuntimeError(f"boom on seed {seed}")
history = [dict(epoch=e, train_acc=99.0, test_acc=99.3 + seed / 10 + e / 100, seconds=0.1)
           for e in range(1, epochs + 1)]
for row in history:  # the line utils.fit prints, which the runner follows
    print(f"epoch {row['epoch']:2d}  lr 0.1000  train loss 0.1 acc 99.00%  test loss 0.1 acc {row['test_acc']:.2f}%")
from utils.results import save_results
save_results(pathlib.Path(results_dir) / "tiny.json", "tiny", dict(lr=lr), 123, history)'''


@pytest.fixture
def tiny_notebook(tmp_path):
    """A notebook with a parameters cell like the series' ones; it 'trains' instantly."""
    nb = nbformat.v4.new_notebook()
    setup = nbformat.v4.new_code_cell(f"import sys; sys.path.insert(0, {str(batch.REPO)!r})")
    params = nbformat.v4.new_code_cell('epochs = 15\nlr = 0.1\nseed = 1\nfail_on_seed = -1\n'
                                       'train_limit = None\nresults_dir = "results"\nimages_dir = "images"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [setup, params, nbformat.v4.new_code_cell(TINY)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    return path


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
    assert batch.read_progress(run_dir) == {"epoch": 3, "test_acc": 99.33}


def test_epoch_watcher_keeps_the_latest_epoch(tmp_path):
    watcher = batch.EpochWatcher(tmp_path)
    assert batch.read_progress(tmp_path) is None
    watcher.write("device: cpu\n")
    watcher.write("epoch  1  lr 0.0100  train loss 0.5 acc 90.00%  test loss 0.2 acc 97.50%  (9.0 s)\n"
                  "epoch  2  lr 0.0200  train loss 0.3 acc 95.00%  test loss 0.1 acc 98.25%  (9.0 s)\n")
    watcher.close()
    assert batch.read_progress(tmp_path) == {"epoch": 2, "test_acc": 98.25}
    assert "device: cpu" in (tmp_path / "output.log").read_text()


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
    with pytest.raises(ValueError, match="unknown arch 'nope'"):  # the second grid value: nothing ran for the first
        batch.run_batch(path, [0], [["arch", "twopool", '"nope"']], out_dir=tmp_path / "runs")
    with pytest.raises(ValueError, match="dropout must be in"):
        batch.run_batch(path, [0], [["dropout", "1.5"]], out_dir=tmp_path / "runs")
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
    run = batch.plan_runs(tiny_notebook, [0], [["train_limit", "(1, 2)"]])[0]
    assert run["parameters"]["train_limit"] == [1, 2]
