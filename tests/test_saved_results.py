"""The committed results: the README and the notebooks say what results/*.json say, and the
final model meets the exercise's conditions."""

from pathlib import Path

import nbformat
import pytest
import torch

from utils import BAR, count_params, final_net, load_results, report

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"


def _block(text, marker):
    return text.split(f"<!-- {marker}:start -->\n")[1].split(f"<!-- {marker}:end -->")[0].rstrip("\n")


@pytest.mark.parametrize("marker, generate", [
    ("results-table", lambda: report.results_table(RESULTS)),
    ("final-model", report.final_model_tables),
    ("seeds", lambda: report.seeds_table(RESULTS / "seeds.json")),
    ("attempts", lambda: report.attempts_table(RESULTS)),
    ("performance", lambda: report.performance_table(RESULTS / "bench.json")),
])
def test_readme_blocks_match_saved_results(marker, generate):
    assert _block((REPO / "README.md").read_text(), marker) == generate()


@pytest.mark.parametrize("name", list(report.STEPS))
def test_notebook_result_block_matches_its_results(name):
    res = load_results(RESULTS / f"{name}.json")
    assert res["summary"]["epochs"] == 15, "committed results must come from the full-length run"
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    assert _block(nb.cells[0].source, "result") == report.result_block(res)
    outputs = sum(len(c.get("outputs", [])) for c in nb.cells if c.cell_type == "code")
    assert outputs > 0, "notebooks are committed with the outputs of their run"


def test_final_model_under_8k_and_holds_the_bar_in_its_saved_run():
    res = load_results(RESULTS / "05_final.json")
    assert res["params"] == count_params(final_net()) < 8000
    last5 = [row["test_acc"] for row in res["history"][-5:]]
    assert len(res["history"]) <= 15 and len(last5) == 5
    assert min(last5) >= BAR


def test_seed_study_holds_the_bar_on_every_seed():
    s = load_results(RESULTS / "seeds.json")
    assert s["notebook"] == "05_final.ipynb" and s["failed"] == 0 and s["finished"] >= 5
    assert s["holding_bar"] == s["finished"]
    for run in s["runs"]:
        assert min(run["test_acc"][-5:]) >= BAR


def test_exported_model_loads_without_project_code_and_classifies(mnist):
    program = torch.export.load(str(RESULTS / "05_final.pt2")).module()
    (_, _), (x, y) = mnist
    x = ((x[:500].float() / 255 - 0.1307) / 0.3081).unsqueeze(1)
    with torch.no_grad():
        out = program(x)
    assert out.shape == (500, 10)
    assert (out.argmax(1) == y[:500]).float().mean() > 0.98


@pytest.mark.parametrize("name", list(report.STEPS))
def test_papermill_sees_every_parameter(name):
    """papermill (and so `-p` and utils.batch) must parse every line of the parameters cell."""
    import ast

    import papermill as pm

    path = REPO / "notebooks" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assigned = [t.id for node in ast.parse(cell.source).body for t in node.targets]
    assert list(pm.inspect_notebook(str(path))) == assigned
