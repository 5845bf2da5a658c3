"""What a training run computes, hashed: its code, its data and its settings, as one key.

A run's key (`run_record`) hashes the run's value (recipe fields without a name, seed, subset,
device, precision, speed-ups, threads), the published checksums of the MNIST files, and the
code the run executes. That code is derived from the package, not listed by hand: the modules
`train.py` imports, transitively (a subpackage among them whole), less

* `experiments.py`, whose whole effect on a run, the recipe, is in the value field by field;
* the other models' files: models/__init__.py names every model and imports a model's file
  only when it is built, and a run builds one, so editing the ViT retrains no CNN;
* `speed/` where the run's path applies none of it (`fast` off), and `speed/cuda.py` where it
  captures no CUDA graph;
* the modules that decide nothing a run computes (NOT_COMPUTATION).

The import graph is followed through training code only: what a module that only names,
describes or places a run imports (a record reader, say) is not code the run executes.

Python is hashed as a canonical form of its syntax tree without docstrings (`codehash`), the same
bytes under every interpreter, so a comment or a reworded docstring retrains nothing and a run
made under Python 3.12 on a GPU machine keeps its key on a CPU machine under 3.11. The record
names the scheme it was hashed under (`code_scheme`); a record of another scheme is compared
with nothing and says so in one reason (`differences`).

torch's release is part of a run's value: another release computes other numbers (kernels,
default algorithms, random streams), so the cache must not hand out a run of torch 2.11 as one
of 2.14. Its local build label (`+cu130`, `+cpu`) is left out, as are the interpreter, paths and
the machine's name: none of them changes what a run computes on a given device, and the device is
in the value.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from pathlib import Path

from . import paths
from .codehash import LEGACY_SCHEME, SCHEME, code_hash_of
from .data import MD5

__all__ = ["LEGACY_SCHEME", "SCHEME", "code_hash", "code_hash_of", "code_hashes", "differences", "file_hash",
           "git_state", "key_of", "keyed", "run_record", "scheme_of", "torch_release", "training_sources"]

TRAINING_ENTRY = "mnist_lab.train"  # what trains; everything it imports is training code,
RECORDED_AS_INPUTS = {"mnist_lab.experiments"}  # except what a run's value holds as data,
NOT_COMPUTATION = {  # and what only describes, names, places or schedules a run
    "mnist_lab.errors",  # messages
    "mnist_lab.machine",  # the machine-wide CPU slot: when a run trains, not what it computes
    "mnist_lab.fingerprint",  # this file: a change of the key's recipe changes every key anyway
    "mnist_lab.codehash",  # how code is hashed: a new scheme is named in every record (SCHEME)
    "mnist_lab.spec",  # the run's value, hashed field by field
    "mnist_lab.profiles",  # a profile's effect on a run (subset, epochs) is in the value
    "mnist_lab.paths",  # where files are; the data's checksums are in the key
    "mnist_lab.files",  # how files are written whole
}
SPEED = Path("mnist_lab") / "speed"
CUDA_GRAPHS = SPEED / "cuda.py"


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _by_version(function):
    """Remember `function(path)` while the file stays as it was (same size and modification
    time): a plan hashes the same twenty files for each of its thirty runs."""
    remembered = functools.lru_cache(maxsize=1024)(lambda path, *version: function(path))

    @functools.wraps(function)
    def wrapper(path):
        path = Path(path)
        try:
            status = path.stat()
        except OSError:
            return function(path)
        return remembered(path, status.st_mtime_ns, status.st_size, status.st_ino)

    return wrapper


@_by_version
def code_hash(path: str | Path) -> str:
    """What a source file does, hashed under `SCHEME` (`codehash`): a comment or a reworded
    docstring changes no key and stales nothing."""
    path = Path(path)
    return code_hash_of(path.read_bytes(), path.suffix)


def _module_file(module: str) -> Path | None:
    base = paths.ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@_by_version
def _file_imports(path: Path) -> list:
    """Each import statement of a file, as (level, module, names)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.append((0, None, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module, [alias.name for alias in node.names]))
    return found


def _imports(path: Path, module: str) -> set[str]:
    """The mnist_lab modules a source file imports, anywhere in it (function-level imports too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for level, imported, names in _file_imports(path):
        if imported is None and not level:  # import a.b
            found.update(names)
            continue
        base = imported or ""
        if level:
            anchor = package.split(".")[: len(package.split(".")) - level + 1]
            base = ".".join(anchor + ([base] if base else []))
        found.add(base)
        found.update(f"{base}.{name}" for name in names)  # `from . import x` names modules
    return {name for name in found if name.split(".")[0] == "mnist_lab" and _module_file(name)}


def training_sources(model: str | None = None, *, fast: bool = True, cuda_graphs: bool = True) -> list[Path]:
    """Every file of the package that a run of `model` on this path executes (see the module's doc)."""
    seen, queue = set(), [TRAINING_ENTRY]
    while queue:
        module = queue.pop()
        if module in seen:
            continue
        seen.add(module)
        parent = module.rpartition(".")[0]
        if parent and parent != "mnist_lab":
            queue.append(parent)  # importing a.b.c runs a/b/__init__.py
        if module not in RECORDED_AS_INPUTS | NOT_COMPUTATION:  # what they import, a run does not execute
            queue.extend(_imports(_module_file(module), module) - seen)
    files = set()
    for module in seen - RECORDED_AS_INPUTS - NOT_COMPUTATION:
        path = _module_file(module)
        if path.name == "__init__.py" and module != "mnist_lab":
            files.update(p for p in path.parent.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        else:
            files.add(path)
    models = paths.ROOT / "mnist_lab" / "models"
    if model is not None:
        files = {path for path in files if path.parent != models or path.name in ("__init__.py", f"{model}.py")}
    if not fast:
        files = {path for path in files if paths.ROOT / SPEED not in path.parents}
    elif not cuda_graphs:
        files.discard(paths.ROOT / CUDA_GRAPHS)
    return sorted(files)


def code_hashes(model: str | None = None, *, fast: bool = True, cuda_graphs: bool = True) -> dict[str, str]:
    return {str(path.relative_to(paths.ROOT)): code_hash(path)
            for path in training_sources(model, fast=fast, cuda_graphs=cuda_graphs)}


def torch_release() -> str:
    """The installed torch's release, without its build label: "2.14.1" for "2.14.1+cu130"."""
    import torch

    return torch.__version__.split("+")[0]


def run_record(value: dict) -> dict:
    """A run's value, the code it executes and the data, with its key (`fingerprint`): the hash
    of the rest. `value` is `RunSpec.value()`, or one read back from a run's record."""
    value = json.loads(json.dumps(value, sort_keys=True, default=str))
    recipe = value.get("recipe") if isinstance(value.get("recipe"), dict) else {}
    model = recipe.get("model") if isinstance(recipe.get("model"), str) else None
    code = code_hashes(model, fast=value.get("fast", True) is not False, cuda_graphs=value.get("cuda_graphs") is True)
    return keyed(value, code, dict(MD5))


def keyed(value: dict, code: dict, data: dict, scheme: str = SCHEME) -> dict:
    """The record of a run's value, code hashes (under `scheme`) and data, with its key: the
    SHA-256 of the rest as sorted, ASCII JSON, text that no interpreter or host changes."""
    record = {"inputs": value, "code": code, "code_scheme": scheme, "data": data}
    return {**record, "fingerprint": key_of(record)}


def key_of(record: dict) -> str:
    """The key a record's own fields give: its value, code hashes and data, and its scheme where
    it names one (records before schemes had names hashed without the field)."""
    hashed = {name: record.get(name) for name in ("inputs", "code", "data")}
    if "code_scheme" in record:
        hashed["code_scheme"] = record["code_scheme"]
    return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()


def scheme_of(record: dict) -> str:
    """The code-hash scheme a record was written under (records before schemes had names: the first)."""
    scheme = record.get("code_scheme")
    return scheme if isinstance(scheme, str) else LEGACY_SCHEME


def differences(then: dict, now: dict, *, hashed_by: str | None = None) -> list[str]:
    """Why the run record `then` is not `now` (each as `run_record` writes it), one item each:

    * a record hashed under another code-hash scheme: that alone stands for its code (its hashes
      are not comparable file by file), e.g. "hashed under code-hash scheme ast-dump/1 (Python 3.12.3)";
    * else each code file whose hash differs, by its path;
    * each field of the value that differs, as "device (cpu vs cuda)" (the recipe's, field by field);
    * "the MNIST data".

    Empty: the same key. Every "what changed" of the project (the run cache's staleness, frozen
    runs, `status`) is this one comparison."""
    if then.get("fingerprint") == now.get("fingerprint"):
        return []
    found = []
    if scheme_of(then) != scheme_of(now):
        found.append(f"hashed under code-hash scheme {scheme_of(then)}" + (f" (Python {hashed_by})" if hashed_by else ""))
    else:
        then_code, now_code = _mapping(then.get("code")), _mapping(now.get("code"))
        found += [path for path in sorted({*then_code, *now_code}) if then_code.get(path) != now_code.get(path)]
    then_inputs, now_inputs = _mapping(then.get("inputs")), _mapping(now.get("inputs"))
    for field in sorted({*then_inputs, *now_inputs}):
        before, after = then_inputs.get(field), now_inputs.get(field)
        if field == "recipe" and isinstance(before, dict) and isinstance(after, dict):
            found += [f"{name} ({before.get(name)} vs {after.get(name)})" for name in sorted({*before, *after})
                      if before.get(name) != after.get(name)]
        elif before != after:
            found.append(f"{field} ({before} vs {after})")
    if then.get("data") != now.get("data"):
        found.append("the MNIST data")
    return found


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def git_state() -> dict:
    """The commit of the work tree and whether it had uncommitted changes (None outside git)."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
