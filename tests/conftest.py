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
