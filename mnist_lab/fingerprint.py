"""What a training run computes, hashed: its code, its data and its settings, as one key.

A run's key (`run_record`) hashes the run's value (recipe fields without a name, seed, subset,
device, precision, speed-ups, threads), the published checksums of the MNIST files, and the
code the run executes. That code is derived from the package, not listed by hand: the modules
`train.py` imports, transitively (a subpackage among them whole), less

* `experiments.py`, whose whole effect on a run, the recipe, is in the value field by field;
* the other models' files: models/__init__.py imports every model to list them, but a run
  builds one, so editing the ViT retrains no CNN;
* `speed/` where the run's path applies none of it (`fast` off), and `speed/cuda.py` where it
  captures no CUDA graph;
* the modules that decide nothing a run computes (NOT_COMPUTATION).

Python is hashed as its syntax tree without docstrings (the parser drops comments), so a comment
or a reworded docstring retrains nothing.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from pathlib import Path

from . import paths
from .data import MD5

TRAINING_ENTRY = "mnist_lab.train"  # what trains; everything it imports is training code,
RECORDED_AS_INPUTS = {"mnist_lab.experiments"}  # except what a run's value holds as data,
NOT_COMPUTATION = {  # and what only describes, names, places or schedules a run
    "mnist_lab.errors",  # messages
    "mnist_lab.machine",  # the machine-wide CPU slot: when a run trains, not what it computes
    "mnist_lab.fingerprint",  # this file: a change of the key's recipe changes every key anyway
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
    """What a source file does, hashed: a Python file's syntax tree without its docstrings (the
    parser drops comments), so a comment or a reworded docstring changes no key and stales
    nothing; any other file, and Python that does not parse, byte for byte."""
    path = Path(path)
    return code_hash_of(path.read_bytes(), path.suffix)


def code_hash_of(content: bytes, suffix: str) -> str:
    """`code_hash` of a file's content (a version of it in git, say), given its suffix."""
    if suffix != ".py":
        return hashlib.sha256(content).hexdigest()
    try:
        tree = ast.parse(content)
    except (SyntaxError, ValueError):
        return hashlib.sha256(content).hexdigest()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


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


def run_record(value: dict) -> dict:
    """A run's value, the code it executes and the data, with its key (`fingerprint`): the hash
    of the rest. `value` is `RunSpec.value()`, or one read back from a run's record."""
    value = json.loads(json.dumps(value, sort_keys=True, default=str))
    recipe = value.get("recipe") if isinstance(value.get("recipe"), dict) else {}
    model = recipe.get("model") if isinstance(recipe.get("model"), str) else None
    code = code_hashes(model, fast=value.get("fast", True) is not False, cuda_graphs=value.get("cuda_graphs") is True)
    record = {"inputs": value, "code": code, "data": dict(MD5)}
    record["fingerprint"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return record


def git_state() -> dict:
    """The commit of the work tree and whether it had uncommitted changes (None outside git)."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
