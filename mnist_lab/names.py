"""The project's names, once: the lists of models, experiments, profiles, devices and optimizers
that the command line offers, the benchmark and `make gpu-check` run, and the report prints all
derive from here.

Standard library only, so `mnist-lab --help` and a typo answer without importing torch. The
registries that build things from these names (`models.MODELS`, `experiments.EXPERIMENTS`,
`profiles.PROFILES`) hold the same names; tests/test_names.py checks that they agree.
"""

from __future__ import annotations

from pathlib import Path

# One model per file in models/, named by it (a run's key hashes that file: `fingerprint`).
MODELS = tuple(sorted(path.stem for path in (Path(__file__).parent / "models").glob("*.py")
                      if not path.stem.startswith("_")))
# The report's experiments, in its order: Table 1, Table 2 (and its recipe as worded, with the
# flip), Table 3, Table 4.
EXPERIMENTS = ("basic_cnn", "cnn", "cnn_flip", "mobilenet", "vit")
PROFILES = ("full", "smoke")
DEVICES = ("auto", "cpu", "cuda", "mps")  # device.py keeps its own copy: a run's key hashes that file
# Each optimizer an experiment may name, with the words the notebooks and the report use for it.
OPTIMIZERS = {"sgd": "plain SGD", "adam": "Adam", "adamw": "AdamW"}
