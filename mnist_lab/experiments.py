"""The report's experiments as frozen, validated configs: one recipe each, saved beside every result."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from . import names
from .augment import Augmentation
from .errors import LabError, printable
from .models import MODELS

OPTIMIZERS = tuple(names.OPTIMIZERS)
NOT_RECIPE = ("name",)  # an experiment's label: a variant's is built from its validated overrides
# The bounds of a recipe: far beyond any the report or a study trains, yet short of what would run
# for days or exhaust memory before the first epoch ends (a batch is at most the training set).
# Any learning rate over 1 diverges; up to 1e12 is still taken, since driving a run to a nan loss on
# purpose is how the divergence check is tested (tests/test_train.py, test_sweep.py); 1e20 or inf is a slip.
INTEGER_LIMITS = {"epochs": (1, 1000), "batch_size": (1, 60_000), "lr_step": (0, 1000)}
NUMBER_LIMITS = {"lr": (0.0, 1e12), "weight_decay": (0.0, 10.0), "lr_gamma": (0.0, 10.0)}
MAX_ROTATION = 180.0  # degrees: any more is the same rotations again
MODEL_NUMBER_LIMIT = 4096  # a model argument (a width, a depth, heads): the models' own are 128 or less


@dataclass(frozen=True)
class Experiment:
    name: str
    model: str  # a key of mnist_lab.models.MODELS
    optimizer: str  # sgd | adam | adamw
    lr: float
    epochs: int
    batch_size: int = 64  # the report does not say; 64 is the usual MNIST choice
    weight_decay: float = 0.0
    lr_step: int = 0  # StepLR: multiply the learning rate by lr_gamma every lr_step epochs (0 = constant)
    lr_gamma: float = 0.1
    augmentation: Augmentation = field(default_factory=Augmentation)
    model_args: dict = field(default_factory=dict)  # overrides of the model's constructor defaults

    def __post_init__(self):
        if self.model not in MODELS:
            raise LabError(f"experiment {self.name!r}: unknown model {self.model!r}; choose one of: {', '.join(MODELS)}")
        if self.optimizer not in OPTIMIZERS:
            raise LabError(f"experiment {self.name!r}: unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        for name, (minimum, maximum) in INTEGER_LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
                raise LabError(f"experiment {self._label()}: {name} must be an integer >= {minimum} and <= {maximum}, "
                               f"got {_shown(value)}")
        for name, (minimum, maximum) in NUMBER_LIMITS.items():
            _check_number(self, name, getattr(self, name), minimum, maximum)
        augmentation = self.augmentation
        if not isinstance(augmentation, Augmentation) or not isinstance(augmentation.hflip, bool):
            raise LabError(f"experiment {self._label()}: augmentation.hflip must be true or false")
        _check_number(self, "max_rotation", augmentation.max_rotation, 0.0, MAX_ROTATION)
        self._check_model_args()

    def _label(self) -> str:
        return printable(repr(self.name), 80)

    def _check_model_args(self) -> None:
        """Each override a keyword the model's constructor takes, of its default's type and within
        bounds: refused here, when the recipe is made, not when a worker on a cluster builds the model."""
        if not isinstance(self.model_args, dict):
            raise LabError(f"experiment {self._label()}: model_args must be an object of the model's arguments")
        if not self.model_args:
            return  # nothing to check: the model's own file is not imported for it
        import inspect

        from .models import model_class

        accepted = {name: parameter.default for name, parameter in
                    inspect.signature(model_class(self.model)).parameters.items()
                    if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)}
        for key, value in self.model_args.items():
            if key not in accepted:
                raise LabError(f"experiment {self._label()}: model {self.model!r} has no argument "
                               f"{printable(repr(key), 60)}; it accepts: {', '.join(accepted)}")
            default = accepted[key]
            expected = type(default) if isinstance(default, (bool, int, float, str)) else None
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if expected is not None and type(value) is not expected:
                raise LabError(f"experiment {self._label()}: model argument {key} must be {expected.__name__}, "
                               f"got {_shown(value)}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                _check_number(self, f"model argument {key}", value, -MODEL_NUMBER_LIMIT, MODEL_NUMBER_LIMIT)

    def replace(self, **overrides) -> Experiment:
        """A copy with some fields changed; unknown fields and wrong types are errors, not warnings."""
        return _checked_replace(self, overrides, "experiment field")

    def with_override(self, field: str, value) -> Experiment:
        """A copy with one field changed: an experiment field (`lr`) or an augmentation one
        (`hflip`, or `augmentation.hflip`), with `replace`'s checks."""
        if field in NOT_RECIPE:
            raise LabError(f"{field!r} is a label, not part of a recipe, and cannot be overridden; "
                           "a variant is named after the fields it changes")
        leaf = field.removeprefix("augmentation.")
        augmentation_fields = {f.name for f in dataclasses.fields(Augmentation)}
        if leaf in augmentation_fields and (field != leaf or leaf not in {f.name for f in dataclasses.fields(self)}):
            return self.replace(augmentation=_checked_replace(self.augmentation, {leaf: value}, "augmentation field"))
        return self.replace(**{field: value})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _shown(value) -> str:
    return printable(repr(value), 60)


def _check_number(experiment: Experiment, name: str, value, minimum: float, maximum: float) -> None:
    """A finite number from `minimum` to `maximum` (inf, nan and 1e20 are typed as easily as 1e-3)."""
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or not minimum <= value <= maximum):
        raise LabError(f"experiment {experiment._label()}: {name} must be a finite number from {minimum:g} to "
                       f"{maximum:g}, got {_shown(value)}")


def _checked_replace(obj, overrides: dict, what: str):
    fields = {f.name for f in dataclasses.fields(obj)}
    for key, value in overrides.items():
        if key not in fields:
            raise LabError(f"unknown {what} {printable(repr(key), 60)}; valid fields: {', '.join(sorted(fields))}")
        expected = type(getattr(obj, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue  # an integer is a fine learning rate
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise LabError(f"{what} {key!r} must be {expected.__name__}, got {_shown(value)}")
    return dataclasses.replace(obj, **overrides)


def parse_value(text: str):
    """A value as typed on the command line (`--set`, `-p`): true/false, a Python literal (a
    number, a list), or else the word itself as a string. The project's one literal parser."""
    import ast

    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def format_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)


def variant(base: str, overrides: dict) -> Experiment:
    """A registered experiment with some fields changed, named after them: cnn[hflip=true,lr=0.0003].

    `get_experiment` rebuilds the same variant from the name alone. The name is a label: a run
    is its recipe's fields (`spec.RunSpec`), so a variant that spells out its base's own values
    is the base's run.
    """
    experiment = get_experiment(base)
    for name, value in overrides.items():
        experiment = experiment.with_override(name, value)
    labels = ",".join(f"{name.removeprefix('augmentation.')}={format_value(value)}"
                      for name, value in sorted(overrides.items()))
    return experiment.replace(name=f"{base}[{labels}]") if overrides else experiment


def augmentation_parts(augmentation: Augmentation) -> list[str]:
    """The augmentation in a table's words: ["flip", "rotation ±10°"] (empty: none)."""
    return (["flip"] if augmentation.hflip else []) + (
        [f"rotation ±{augmentation.max_rotation:g}°"] if augmentation.max_rotation else [])


def describe_augmentation(augmentation: Augmentation) -> str:
    """The augmentation in words, as the notebooks and the report print it (never typed by hand)."""
    rotation = f"rotations of up to ±{augmentation.max_rotation:g}°" if augmentation.max_rotation else ""
    if augmentation.hflip and rotation:
        return f"random horizontal flips and {rotation}"
    if augmentation.hflip:
        return "random horizontal flips"
    return f"random {rotation}" if rotation else "no augmentation"


def describe(experiment: Experiment) -> str:
    """A recipe in words: optimizer, learning rate and its schedule, epochs, batch size, augmentation."""
    schedule = f", divided by {1 / experiment.lr_gamma:g} every {experiment.lr_step} epochs" if experiment.lr_step else ""
    decay = f", weight decay {experiment.weight_decay:g}" if experiment.weight_decay else ""
    return (f"{names.OPTIMIZERS[experiment.optimizer]} at learning rate {experiment.lr:g}{schedule}{decay}, "
            f"{experiment.epochs} epochs in batches of {experiment.batch_size}, "
            f"{describe_augmentation(experiment.augmentation)}")


# Rotation range: the report does not give one; ±10° is the common choice for digits
# (larger angles start to turn a 6 into a 9's neighbourhood).
ROTATE = Augmentation(max_rotation=10.0)

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in [
        # Table 1: plain SGD without momentum, no augmentation. The report gives no batch size;
        # 128 is the Q2 notebook's calibration study's choice (results.calibration.STUDIES
        # ["basic_cnn"]; its notebook says in bold if the study ever names another).
        Experiment("basic_cnn", model="basic_cnn", optimizer="sgd", lr=0.01, epochs=3, batch_size=128),
        # Table 2. The report *says* it used random flipping and rotation, but its numbers
        # match rotation alone (a mirrored digit is a different digit or none; the Q2
        # notebook's ablation trains both and sets them beside Table 2). The tables therefore
        # use rotation only; `cnn_flip` is the recipe as worded.
        Experiment("cnn", model="cnn", optimizer="adam", lr=1e-3, epochs=5, augmentation=ROTATE),
        Experiment("cnn_flip", model="cnn", optimizer="adam", lr=1e-3, epochs=5,
                   augmentation=Augmentation(hflip=True, max_rotation=10.0)),
        # Table 3: the report is silent on augmentation; a training accuracy above the
        # test accuracy from epoch 2 on (99.38% vs 98.88%) points to none.
        Experiment("mobilenet", model="mobilenet", optimizer="adam", lr=1e-3, epochs=5),
        # Table 4: AdamW with a tenfold learning-rate drop every 3 epochs. The report is silent
        # on the ViT's augmentation and batch size; rotation alone at batch 64 is the Q3
        # notebook's calibration study's choice (results.calibration.STUDIES["vit"]; its notebook
        # says in bold if the study ever names another). Flip and rotation, as the report's CNN
        # section words it, follows Table 4's curves more closely but ends further from
        # its final test accuracy, and the headline decides.
        Experiment("vit", model="vit", optimizer="adamw", lr=1e-3, epochs=10, weight_decay=1e-4,
                   lr_step=3, lr_gamma=0.1, augmentation=ROTATE),
    ]
}


def get_experiment(name: str) -> Experiment:
    """A registered experiment by name, or a variant of one (`cnn[hflip=true]`, see `variant`)."""
    base, bracket, rest = name.partition("[")
    if bracket:
        if not rest.endswith("]") or not rest[:-1]:
            raise LabError(f"a variant is written base[field=value,...], got {name!r}")
        pairs = [item.partition("=") for item in rest[:-1].split(",")]
        if any(not sep or not key for key, sep, _ in pairs):
            raise LabError(f"a variant is written base[field=value,...], got {name!r}")
        return variant(base, {key.strip(): parse_value(value.strip()) for key, _, value in pairs})
    if name not in EXPERIMENTS:
        raise LabError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]
