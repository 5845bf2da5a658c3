"""One registry of names (mnist_lab/names.py): every list derives from it, and the registries
that build things from the names hold the same ones."""

import subprocess
import sys

from mnist_lab import names


def test_the_registries_that_build_things_hold_the_registrys_names():
    from mnist_lab.bench import benchmark, gpu_check
    from mnist_lab.device import DEVICES
    from mnist_lab.experiments import EXPERIMENTS
    from mnist_lab.models import MODELS
    from mnist_lab.profiles import PROFILES

    assert names.MODELS == tuple(MODELS) == ("basic_cnn", "cnn", "mobilenet", "vit")
    assert names.EXPERIMENTS == tuple(EXPERIMENTS)
    assert names.PROFILES == tuple(PROFILES)
    assert names.DEVICES == DEVICES
    assert benchmark.MODELS == names.MODELS and gpu_check.SCHEDULE == names.EXPERIMENTS
    assert {experiment.model for experiment in EXPERIMENTS.values()} == set(names.MODELS)
    assert {experiment.optimizer for experiment in EXPERIMENTS.values()} <= set(names.OPTIMIZERS)


def test_the_registry_imports_no_torch():
    loaded = subprocess.run([sys.executable, "-c", "import sys, mnist_lab.names; print('torch' in sys.modules)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "False"
