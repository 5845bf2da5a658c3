"""Every record the project reads from disk, declared once, and the one bounded reader for them all.

What lies under artifacts/ and frozen/ may come from another machine (an archive, a sweep's
worker), be cut short or be written by hand, so nothing read there is trusted:

    record = records.load(path, records.RUN_RECORD)      # the record, or None: absent or unusable
    value, problem = records.inspect(path, records.NOTEBOOK_RECORD)   # ... and why it is unusable
    record = records.read(path, records.RUN_METRICS)     # the record, or a LabError naming the file
    manifest = records.parse(data, records.ARCHIVE_MANIFEST)   # bytes already in hand

Each kind says what its file may hold: the fields the project reads, their types, and bounds
(the file's size, read before anything is parsed; nesting depth, checked before the parser sees
the text, so JSON nested 200,000 deep is one line rather than a RecursionError; the length of
any string, the count of values; numbers finite and within range). Fields a kind does not name
are allowed but never read. A record that fails is as if absent, with one line naming the file
(`load` logs it once per process on the `mnist_lab.records` logger, which the command line prints).

Standard library only: `status` and `unpack` read records without importing torch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LabError, printable

MAX_DEPTH = 32  # the deepest a record the project writes nests is 5 (a run record's recipe's augmentation)
MAX_STRING = 64 * 1024  # characters in any one string, keys included
MAX_VALUES = 100_000  # values in one file, every container's items together
MAX_BYTES = 16 * 1024**2
MAX_INTEGER = 2**63  # JSON integers beyond this are no count or size the project writes
HEX40 = r"[0-9a-f]{40}(?:[0-9a-f]{24})?"  # a SHA-1 commit, or a SHA-256 one
HEX64 = r"[0-9a-f]{64}"

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())  # silent unless the command line (or a user) attaches a handler
_told: set[str] = set()


class Unreadable(LabError):
    """A record that cannot be used; its message is the problem alone (callers name the file)."""


# ---- the shapes -----------------------------------------------------------------------------------


def _json_kind(value) -> str:
    """A value's JSON type, for messages."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {dict: "an object", list: "an array", str: "a string", type(None): "null"}.get(type(value), "a value")


def _where(path: tuple) -> str:
    return "it" if not path else "its " + " → ".join(printable(repr(key), 60) for key in path)


class Shape:
    wanted = "a value"

    def problem(self, value, path: tuple) -> str | None:
        raise NotImplementedError

    def _wrong(self, value, path: tuple) -> str:
        return f"{_where(path)} is {_json_kind(value)}, not {self.wanted}"


@dataclass(frozen=True)
class Anything(Shape):
    """Any JSON value (still within the file's bounds on depth, length, count and numbers)."""
    wanted = "a value"

    def problem(self, value, path):
        return None


@dataclass(frozen=True)
class Text(Shape):
    max_length: int = MAX_STRING
    pattern: str | None = None  # the whole string must match
    wanted = "a string"

    def problem(self, value, path):
        if not isinstance(value, str):
            return self._wrong(value, path)
        if len(value) > self.max_length:
            return f"{_where(path)} is a string of {len(value)} characters, over the {self.max_length} allowed"
        if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
            return f"{_where(path)} is not of the form {self.pattern}"
        return None


@dataclass(frozen=True)
class Number(Shape):
    minimum: float | None = None
    maximum: float | None = None
    integer: bool = False

    @property
    def wanted(self):
        return "an integer" if self.integer else "a number"

    def problem(self, value, path):
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return self._wrong(value, path)
        if isinstance(value, float) and not math.isfinite(value):
            return f"{_where(path)} is not a finite number"
        if self.minimum is not None and value < self.minimum:
            return f"{_where(path)} is {value}, under the minimum of {self.minimum}"
        if self.maximum is not None and value > self.maximum:
            return f"{_where(path)} is {value}, over the limit of {self.maximum}"
        return None


def Integer(minimum: int | None = None, maximum: int | None = None) -> Number:  # noqa: N802 (a shape, as the others)
    return Number(minimum, maximum, integer=True)


@dataclass(frozen=True)
class Flag(Shape):
    wanted = "true or false"

    def problem(self, value, path):
        return None if isinstance(value, bool) else self._wrong(value, path)


@dataclass(frozen=True)
class Optional(Shape):
    """`inner` or null."""
    inner: Shape

    @property
    def wanted(self):
        return f"{self.inner.wanted} or null"

    def problem(self, value, path):
        if value is None:
            return None
        found = self.inner.problem(value, path)
        return self._wrong(value, path) if found and found == self.inner._wrong(value, path) else found


@dataclass(frozen=True)
class Object(Shape):
    """An object with these fields (in the order they are checked); `optional` ones may be absent.
    Other fields are allowed and never read."""
    fields: dict = field(default_factory=dict)
    optional: dict = field(default_factory=dict)
    wanted = "an object"

    def problem(self, value, path):
        if not isinstance(value, dict):
            return self._wrong(value, path)
        for name, shape in self.fields.items():
            if name not in value:
                return f"{_where(path)} has no {name!r}"
            found = shape.problem(value[name], (*path, name))
            if found:
                return found
        for name, shape in self.optional.items():
            if name in value:
                found = shape.problem(value[name], (*path, name))
                if found:
                    return found
        return None


@dataclass(frozen=True)
class Mapping(Shape):
    """An object of any keys (each a string of at most `key_length`), every value of one shape."""
    value: Shape = field(default_factory=Anything)
    max_items: int = MAX_VALUES
    key_length: int = 4096
    wanted = "an object"

    def problem(self, value, path):
        if not isinstance(value, dict):
            return self._wrong(value, path)
        if len(value) > self.max_items:
            return f"{_where(path)} holds {len(value)} entries, over the {self.max_items} allowed"
        for key, item in value.items():
            if len(key) > self.key_length:
                return f"{_where(path)} has a name of {len(key)} characters, over the {self.key_length} allowed"
            found = self.value.problem(item, (*path, key))
            if found:
                return found
        return None


@dataclass(frozen=True)
class Array(Shape):
    item: Shape = field(default_factory=Anything)
    max_items: int = MAX_VALUES
    length: int | None = None  # exactly this many items
    wanted = "an array"

    def problem(self, value, path):
        if not isinstance(value, list):
            return self._wrong(value, path)
        if self.length is not None and len(value) != self.length:
            return f"{_where(path)} holds {len(value)} items, not {self.length}"
        if len(value) > self.max_items:
            return f"{_where(path)} holds {len(value)} items, over the {self.max_items} allowed"
        for number, item in enumerate(value):
            found = self.item.problem(item, (*path, number))
            if found:
                return found
        return None


# ---- the kinds the project reads ------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # each kind is itself: compared and hashed by identity
class Kind:
    """One kind of file the project reads: what it is called in messages, its shape and its bounds."""
    what: str  # "a run record": as in "X is not a run record mnist-lab can read"
    shape: Shape
    max_bytes: int = MAX_BYTES
    max_depth: int = MAX_DEPTH
    max_values: int = MAX_VALUES
    max_string: int = MAX_STRING


NAME = Text(max_length=4096)
HASHES = Mapping(NAME)  # path or name → hash (or key)
GIT = Object(optional={"commit": Optional(Text(pattern=HEX40)), "dirty": Optional(Flag())})
CODE_SCHEME = Text(max_length=200)  # how the record's "code" hashes were made (absent in older records)

# runs/<key[:16]>/provenance.json and frozen/<profile>/<key[:16]>/provenance.json (fingerprint.run_record
# and runs.directory.save_run): the key, the value it hashes, the code and data hashes, each file's hash.
RUN_RECORD = Kind("a run record", Object(
    {"fingerprint": Text(pattern=HEX64), "inputs": Object(), "code": HASHES, "data": HASHES},
    optional={"files": HASHES, "git": GIT, "wall_seconds": Number(0), "code_scheme": CODE_SCHEME}))
# The run cache's runs/index.json, and frozen/<profile>/index.json: label → seed → key.
RUN_INDEX = Kind("a run index", Mapping(Mapping(Text(pattern=HEX64), key_length=20), key_length=1000))
FROZEN_INDEX = Kind("a frozen index", RUN_INDEX.shape)
# frozen/<profile>/studies.json (runs.frozen.freeze): study → its declared candidates, seeds, epochs.
FROZEN_STUDIES = Kind("a frozen studies declaration", Mapping(Mapping(Anything())))
# runs/footprints.json (runs.side_by_side): model → the largest peak of GPU memory measured, in bytes.
FOOTPRINTS = Kind("a record of GPU footprints", Mapping(Integer(1, 2**50), max_items=100, key_length=100))

_MACRO = Array(Text(), length=3)
CHANGES = Object(optional={"macros": Array(_MACRO), "tables": Array(Text())})
# artifacts/<profile>/provenance/<notebook>.json (workbook.commit): what the runner, `status`, the
# pages, the title page and `unpack` read of it. "device" is quoted as text whatever it is.
NOTEBOOK_RECORD = Kind("a notebook's provenance record", Object(
    {"notebook": NAME, "started": Text(max_length=100), "wall_seconds": Number(0), "git": GIT, "profile": NAME,
     "parameters": Object(), "notebook_hash": Text(max_length=200), "data": HASHES, "sources": HASHES,
     "runs": HASHES, "outputs": HASHES, "changes": CHANGES},
    optional={"frozen": HASHES, "code_scheme": CODE_SCHEME}))

# A run's config.json, metrics.json and environment.json (runs.directory.save_run), as the report
# and `load_run` read them.
RUN_CONFIG = Kind("a training run's config", Object(
    {"experiment": Object({"model": NAME}), "seed": Integer(0, 2**32 - 1)},
    optional={"fingerprint": Optional(Text(max_length=200))}))
RUN_METRICS = Kind("a training run's metrics", Object(
    {"epochs": Integer(0, 10**6), "test_accuracy": Number(0, 100), "train_seconds": Number(0)}))
RUN_ENVIRONMENT = Kind("a training run's environment", Object())

# MANIFEST.json in an archive (workbook.archive.pack): each file's size and SHA-256.
MANIFEST_FILES = 100_000  # archive.MAX_MEMBERS
ARCHIVE_MANIFEST = Kind("a manifest written by `mnist-lab pack`", Object(
    {"files": Mapping(Object({"size": Integer(0, 2**40), "sha256": Text(pattern=HEX64)}),
                      max_items=MANIFEST_FILES)},
    optional={"format": Integer(), "profile": NAME}),
    max_bytes=32 * 1024**2, max_values=4 * MANIFEST_FILES + 10)

# An executed notebook, as the title page reads its papermill end time (it may hold large figures).
# Its outputs hold figures as base64 strings of megabytes.
EXECUTED_NOTEBOOK = Kind("an executed notebook", Object(), max_bytes=256 * 1024**2, max_depth=64,
                         max_values=10_000_000, max_string=256 * 1024**2)

KINDS = (RUN_RECORD, RUN_INDEX, FROZEN_INDEX, FROZEN_STUDIES, FOOTPRINTS, NOTEBOOK_RECORD, RUN_CONFIG, RUN_METRICS,
         RUN_ENVIRONMENT, ARCHIVE_MANIFEST, EXECUTED_NOTEBOOK)


# ---- the reader -----------------------------------------------------------------------------------

_SPECIAL = re.compile(r'[\[\]{}"\\]')


def _depth_problem(text: str, max_depth: int) -> str | None:
    """Whether `text` nests deeper than `max_depth`: brackets outside strings counted by a loop over
    the characters that matter, not by recursion (which is how the parser would find out)."""
    depth, in_string, escaped = 0, False, -1
    for match in _SPECIAL.finditer(text):
        position = match.start()
        if position == escaped:
            continue
        char = text[position]
        if in_string:
            if char == "\\":
                escaped = position + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return f"it nests deeper than {max_depth} levels"
        elif char in "]}":
            depth -= 1
    return None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {printable(text, 40)} is not finite")
    return value


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > 19:
        raise ValueError(f"the integer {printable(text, 40)} is over 19 digits")
    return int(text)


def _constant(text: str):
    raise ValueError(f"{text} is not a number JSON allows")


def _unique(pairs: list) -> dict:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"the name {printable(repr(repeated), 60)} appears twice in one object")
    return found


def _bounds_problem(value, kind: Kind) -> str | None:
    """Every string's length and the count of values, walked with a stack (depth is bounded already)."""
    stack, count = [value], 0
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if len(item) > kind.max_string:
                return f"it holds a string of {len(item)} characters, over the {kind.max_string} allowed"
            continue
        if isinstance(item, dict):
            count += len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            count += len(item)
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_INTEGER:
            return "it holds an integer over 2**63"
        if count > kind.max_values:
            return f"it holds over {kind.max_values} values"
    return None


def parse(data: bytes, kind: Kind):
    """The record in `data`, checked against `kind`; else `Unreadable` saying why, in one line."""
    if len(data) > kind.max_bytes:
        raise Unreadable(f"it is {len(data)} bytes, over the {kind.max_bytes} {kind.what} may have")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Unreadable("it is not UTF-8 text") from None
    problem = _depth_problem(text, kind.max_depth)
    if problem:
        raise Unreadable(problem)
    try:
        value = json.loads(text, parse_float=_finite, parse_int=_integer, parse_constant=_constant,
                           object_pairs_hook=_unique)
    except RecursionError:  # only if the depth check above were wrong; never a traceback
        raise Unreadable(f"it nests deeper than {kind.max_depth} levels") from None
    except ValueError as error:  # JSONDecodeError, and the hooks' refusals
        raise Unreadable(f"not JSON: {printable(error, 120)}") from None
    problem = _bounds_problem(value, kind) or kind.shape.problem(value, ())
    if problem:
        raise Unreadable(problem)
    return value


def _read_bytes(path: Path, kind: Kind) -> bytes:
    """The file's bytes, at most kind.max_bytes + 1 of them; never through a link, never from a
    device or a fifo. FileNotFoundError where there is no file."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise Unreadable(error.strerror or type(error).__name__) from None
    if stat.S_ISLNK(info.st_mode):
        raise Unreadable("it is a symbolic link, not a file")
    if stat.S_ISDIR(info.st_mode):
        raise Unreadable("it is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise Unreadable("it is not a regular file")
    if info.st_size > kind.max_bytes:
        raise Unreadable(f"it is {info.st_size} bytes, over the {kind.max_bytes} {kind.what} may have")
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise Unreadable(error.strerror or type(error).__name__) from None
    with os.fdopen(descriptor, "rb") as file:
        try:
            return file.read(kind.max_bytes + 1)
        except OSError as error:
            raise Unreadable(error.strerror or type(error).__name__) from None


def inspect(path: str | Path, kind: Kind) -> tuple[object, str | None]:
    """(record, None) if the file is a valid `kind`; (None, None) if there is no file; (None, why) else."""
    try:
        return parse(_read_bytes(Path(path), kind), kind), None
    except FileNotFoundError:
        return None, None
    except Unreadable as error:
        return None, str(error)


def describe(path: str | Path, kind: Kind, problem: str) -> str:
    """The one line that names a file and what is wrong with it."""
    return f"{printable(path, 1000)} is not {kind.what} mnist-lab can read ({problem})"


def read(path: str | Path, kind: Kind, *, fix: str = ""):
    """The record at `path`; a missing or unusable one is a LabError naming the file (and `fix`)."""
    value, problem = inspect(path, kind)
    if problem is None and value is None:
        problem = "there is no such file"
    if problem is not None:
        raise LabError(describe(path, kind, problem) + (f"; {fix}" if fix else ""))
    return value


def load(path: str | Path, kind: Kind):
    """The record at `path`, or None: absent, or unusable and then told once (as if absent)."""
    value, problem = inspect(path, kind)
    if problem is not None:
        tell(describe(path, kind, problem) + "; ignored as if absent")
    return value


def tell(line: str) -> None:
    """Log one line about a file from disk, once per process (a folder is read many times a command)."""
    if line not in _told:
        _told.add(line)
        log.warning("%s", line)
