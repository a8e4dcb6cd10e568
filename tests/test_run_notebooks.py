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


def test_the_start_order_ends_the_main_job_soonest():
    """Five runs on two lanes: longest first puts the two longest side by side and then three on one
    lane; the chosen order starts a short one beside the longest and ends sooner."""
    times = {"03": 414.0, "04": 412.0, "05": 305.0, "02": 298.0, "01": 281.0}
    longest_first = sorted(times, key=lambda n: -times[n])
    assert run_notebooks.makespan([times[n] for n in longest_first], 2) == 993.0
    order = run_notebooks.start_order(times, 2)
    assert sorted(order) == sorted(times)
    assert run_notebooks.makespan([times[n] for n in order], 2) == 884.0  # 414 + 412 | 305 + 298 + 281
    assert run_notebooks.start_order(times, 5) == longest_first  # a lane each: nothing to choose
    assert run_notebooks.makespan([1.0, 2.0, 3.0], 1) == 6.0


def test_expected_seconds_come_from_the_saved_results(tmp_path):
    from pathlib import Path

    from utils.results import save_json
    save_json(tmp_path / "05_final.json", dict(history=[dict(seconds=20.5), dict(seconds=21.5)]))
    assert run_notebooks.expected_seconds(Path("notebooks/05_final.ipynb"), tmp_path) == 42.0
    (tmp_path / "02_lighter.json").write_text("{not json")
    for never_run in ("01_skeleton", "02_lighter"):
        assert run_notebooks.expected_seconds(Path(f"{never_run}.ipynb"), tmp_path) == run_notebooks.UNMEASURED_SECONDS
    # The saved results of today's notebooks give every one a measured time.
    assert all(run_notebooks.expected_seconds(p) != run_notebooks.UNMEASURED_SECONDS for p in run_notebooks.NOTEBOOKS)
