"""The main job's unit of work: a notebook run in place, replaced only when its run finished."""

import json

from utils import run_notebooks


def test_a_finished_run_replaces_the_notebook_with_its_outputs(tiny_notebook, tmp_path):
    record = run_notebooks.execute_in_place(str(tiny_notebook), 1, str(tmp_path / "logs"))
    assert record["status"] == "ok" and record["run"] == "tiny"
    outputs = [o for c in json.loads(tiny_notebook.read_text())["cells"] for o in c.get("outputs", [])]
    assert outputs and "epoch  1" in (tmp_path / "logs" / "output.log").read_text()


def test_a_failed_run_leaves_the_saved_notebook_untouched(tiny_notebook, tmp_path):
    tiny_notebook.write_text(tiny_notebook.read_text().replace("fail_on_seed = -1", "fail_on_seed = 1"))
    before = tiny_notebook.read_text()
    record = run_notebooks.execute_in_place(str(tiny_notebook), 1, str(tmp_path / "logs"))
    assert record["status"] == "failed" and "boom on seed 1" in record["error"]
    assert tiny_notebook.read_text() == before
    assert (tiny_notebook.parent / ".tiny.running.ipynb").is_file()  # the partial run, for a look


def test_the_main_job_runs_its_notebooks_side_by_side_up_to_the_cores():
    five = run_notebooks.NOTEBOOKS
    assert [run_notebooks.plan(five, cores=c) for c in (1, 2, 8)] == [(1, 1), (2, 1), (5, 1)]
    assert run_notebooks.plan(five[:1], cores=8) == (1, 1) and run_notebooks.plan(five, jobs=3, cores=8) == (3, 1)
