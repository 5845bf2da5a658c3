import gzip
import shutil

import pytest
import torch

from mnist_lab import data
from mnist_lab.errors import LabError


def test_mnist_loads_verified(mnist):
    assert mnist.train.images.shape == (60_000, 28, 28) and mnist.train.images.dtype == torch.uint8
    assert mnist.test.images.shape == (10_000, 28, 28)
    assert mnist.train.labels.dtype == torch.int64
    assert set(mnist.train.labels.unique().tolist()) == set(range(10))
    # The first training label of MNIST is a 5, the first test label a 7.
    assert mnist.train.labels[0] == 5 and mnist.test.labels[0] == 7


def _copy_data(tmp_path):
    shutil.copytree(data.raw_dir(data.default_root()), data.raw_dir(tmp_path))
    return tmp_path


def test_truncated_gzip_is_a_clear_error(tmp_path):
    root = _copy_data(tmp_path)
    path = data.raw_dir(root) / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(LabError, match=r"train-labels-idx1-ubyte\.gz.*corrupt or truncated"):
        data.load_mnist(root)


def test_altered_file_fails_its_checksum(tmp_path):
    root = _copy_data(tmp_path)
    gz = data.raw_dir(root) / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(gz.read_bytes()))
    content[100] = (content[100] + 1) % 10  # one label changed: still a valid IDX file
    gz.unlink()
    (data.raw_dir(root) / "t10k-labels-idx1-ubyte").write_bytes(bytes(content))
    with pytest.raises(LabError, match="t10k-labels-idx1-ubyte has MD5 .* not the published 27ae3e4e"):
        data.load_mnist(root)


def test_missing_files_name_the_path_and_the_files(tmp_path):
    with pytest.raises(LabError, match=r"MNIST not found in .*MNIST/raw: missing train-images-idx3-ubyte, .*--download"):
        data.load_mnist(tmp_path)


def test_environment_variable_chooses_the_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_DATA", str(tmp_path))
    assert data.default_root() == tmp_path
    with pytest.raises(LabError, match=str(tmp_path)):
        data.load_mnist()


def test_uncompressed_files_load_too(tmp_path):
    root = _copy_data(tmp_path)
    for gz in data.raw_dir(root).glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    assert len(data.load_mnist(root).test) == 10_000


def test_head_takes_a_prefix(mnist):
    head = mnist.test.head(10)
    assert len(head) == 10 and torch.equal(head.labels, mnist.test.labels[:10])
    with pytest.raises(LabError):
        mnist.test.head(0)
