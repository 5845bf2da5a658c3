import pytest

from mnist_lab.data import load_mnist


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST, read and verified once for the whole session."""
    return load_mnist()


@pytest.fixture(scope="session")
def small_mnist(mnist):
    """A few hundred images: enough to see learning, small enough for a 2-core CPU."""
    from mnist_lab.data import Mnist

    return Mnist(train=mnist.train.head(512), test=mnist.test.head(256))


@pytest.fixture(scope="session")
def smoke_artifacts(tmp_path_factory):
    """Every notebook executed once by papermill under the smoke profile, into a temporary folder.

    The kernels papermill starts read MNIST_LAB_ARTIFACTS; this process reads paths.ARTIFACTS.
    """
    from mnist_lab import paths
    from mnist_lab.build import notebooks

    root = tmp_path_factory.mktemp("artifacts")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MNIST_LAB_ARTIFACTS", str(root))
        patch.setattr(paths, "ARTIFACTS", root)
        notebooks.execute_all(None, profile="smoke", progress=False)
        yield root / "smoke"
