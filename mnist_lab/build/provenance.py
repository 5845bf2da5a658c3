"""Provenance: what each artifact was made from, and whether it still matches its inputs.

The one place that says what an artifact depends on; the training cache, `mnist-lab status`,
`mnist-lab run` and the report's stale check all ask it.

* A training run's *record* (its provenance.json): the recipe, seed and settings, the hash
  of each file of the training code, and the data. Its fingerprint is the hash of that
  record; a cached run is reused only while a fresh record has the same fingerprint, so
  changing a plot never retrains a model and changing a hyperparameter retrains exactly
  that model. The training code is derived from the package, not listed by hand: the
  modules `train.py` imports, transitively, and every file of a subpackage among them, less
  `experiments.py`, whose whole effect on a run, the recipe, is in the record field by field
  (were the file training code, editing one recipe would retrain every model), and less the
  other models' files. Python is hashed as its syntax tree without docstrings, so a comment
  retrains nothing.
* A notebook's *record* (artifacts/<profile>/provenance/<notebook>.json), written when a
  run of the notebook is committed: its parameters, the hash of its code cells, of each
  package file it imported and of every artifact it wrote, the fingerprints of the training
  runs it used, the data, the environment, the git commit and the wall time. `staleness`
  compares a record with the present, recomputing what the runs it used depend on, and
  says what changed.
"""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
from pathlib import Path

from .. import paths
from ..data import MD5
from ..errors import LabError

TRAINING_ENTRY = "mnist_lab.train"  # what trains; everything it imports is training code,
RECORDED_AS_INPUTS = {"mnist_lab.experiments"}  # except what a run's record holds as data


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _relative(path: Path) -> str:
    return str(path.relative_to(paths.ROOT))


# ---- what training depends on -------------------------------------------------------------


def _module_file(module: str) -> Path | None:
    parts = module.split(".")
    base = paths.ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    """The mnist_lab modules a source file imports, anywhere in it (function-level imports too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import x` names modules
    return {name for name in found if name.split(".")[0] == "mnist_lab" and _module_file(name)}


def training_sources(model: str | None = None) -> list[Path]:
    """Every file of the package that training reads: the closure of `train.py`'s imports, and
    each subpackage among them whole (whatever its files' types), so nothing is kept by hand.

    With `model`, of the model files only that model's own: models/__init__.py imports every
    model to list them, but a run builds one, so editing the ViT retrains no CNN.
    """
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
    for module in seen - RECORDED_AS_INPUTS:
        path = _module_file(module)
        if path.name == "__init__.py" and module != "mnist_lab":
            files.update(p for p in path.parent.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        else:
            files.add(path)
    if model is not None:
        models = paths.ROOT / "mnist_lab" / "models"
        files = {path for path in files if path.parent != models or path.name in ("__init__.py", f"{model}.py")}
    return sorted(files)


def code_hash(path: str | Path) -> str:
    """What a source file does, hashed: a Python file's syntax tree without its docstrings (the
    parser drops comments), so a comment or a reworded docstring changes no fingerprint and
    stales nothing; any other file, and Python that does not parse, byte for byte."""
    path = Path(path)
    if path.suffix != ".py":
        return file_hash(path)
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return file_hash(path)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def code_hashes(model: str | None = None) -> dict[str, str]:
    return {_relative(path): code_hash(path) for path in training_sources(model)}


def run_record(**inputs) -> dict:
    """What a training run depends on: the inputs given (recipe, seed, subset, device, ...),
    the training code and the data; with its fingerprint, the hash of the rest."""
    experiment = inputs.get("experiment")
    model = experiment.get("model") if isinstance(experiment, dict) and isinstance(experiment.get("model"), str) else None
    record = {"inputs": json.loads(json.dumps(inputs, sort_keys=True, default=str)), "code": code_hashes(model),
              "data": MD5}
    record["fingerprint"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return record


# The files a run directory holds: its record, and what the record vouches for by hash.
RUN_FILES = ("config.json", "history.csv", "metrics.json", "predictions.csv", "environment.json", "model.pt",
             "provenance.json")


def run_file_hashes(run_directory: Path) -> dict[str, str]:
    return {name: file_hash(Path(run_directory) / name) for name in RUN_FILES if name != "provenance.json"}


def read_run_record(run_directory: Path) -> dict | None:
    """A run's provenance.json, or None where there is none or it is not a record of this project's."""
    path = Path(run_directory) / "provenance.json"
    try:
        record = json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None
    except (OSError, ValueError):
        return None
    fields = {"fingerprint": str, "inputs": dict, "code": dict, "data": dict}
    if not isinstance(record, dict) or not all(isinstance(record.get(k), t) for k, t in fields.items()):
        return None
    return record


def run_file_problems(run_directory: Path) -> list[str]:
    """What is wrong with a run directory's files against its record: missing, changed since the
    run, or not a file a run writes. Empty: every file is the one the run wrote."""
    directory = Path(run_directory)
    record = read_run_record(directory)
    if record is None:
        return ["provenance.json is missing or unreadable"]
    hashes = record.get("files")
    if not isinstance(hashes, dict) or set(hashes) != set(RUN_FILES) - {"provenance.json"}:
        return ["its record lists no hash for each of its files (made by an older version)"]
    problems = []
    for name, digest in sorted(hashes.items()):
        path = directory / name
        if path.is_symlink() or not path.is_file():
            problems.append(f"{name} is missing")
        elif file_hash(path) != digest:
            problems.append(f"{name} changed since the run")
    problems += [f"{p.name} is not a file a run writes" for p in sorted(directory.iterdir()) if p.name not in RUN_FILES]
    return problems


def run_staleness(run_directory: Path, fingerprint: str | None = None) -> list[str]:
    """Why the run in `run_directory` would be trained again now (empty: it is still valid).

    With `fingerprint`, the run must also be the one of that fingerprint (the one a notebook used).
    """
    name = _relative_to_profile(run_directory)
    record = read_run_record(run_directory)
    if record is None:
        return [f"{name} is missing"]
    if fingerprint is not None and record["fingerprint"] != fingerprint:
        return [f"{name} was retrained"]
    problems = run_file_problems(run_directory)
    if problems:
        return [f"{name}: {problem}" for problem in problems]
    now = run_record(**record["inputs"])
    if now["fingerprint"] == record["fingerprint"]:
        return []
    changed = sorted(path for path in {*record["code"], *now["code"]}
                     if record["code"].get(path) != now["code"].get(path))
    reasons = [f"{path} changed (training code of {name})" for path in changed]
    if now["data"] != record["data"]:
        reasons.append(f"MNIST data changed ({name})")
    return reasons or [f"{name}'s inputs changed"]


def _relative_to_profile(run_directory: Path) -> str:
    parts = Path(run_directory).parts
    return "/".join(parts[parts.index("runs"):]) if "runs" in parts else str(run_directory)


# ---- notebooks --------------------------------------------------------------------------------


def read_notebook(path: str | Path) -> dict:
    """The notebook, checked against Jupyter's own schema (nbformat): a file that is JSON but
    not a notebook (`[]`, cells that are not a list, a cell without source) is one clear line."""
    import nbformat

    try:
        notebook = nbformat.reads(Path(path).read_text(), as_version=4)
        nbformat.validate(notebook)
    except ValueError as error:
        raise LabError(f"{path} is not a valid notebook (not JSON: {error})") from None
    except (nbformat.ValidationError, AttributeError, KeyError, TypeError) as error:
        message = getattr(error, "message", None) or str(error)
        raise LabError(f"{path} is not a valid notebook ({message.splitlines()[0][:200]})") from None
    return notebook


def notebook_code_hash(path: str | Path) -> str:
    """Hash of a notebook's code cells only: outputs, metadata and prose do not change results."""
    cells = read_notebook(path).get("cells", [])
    code = ["".join(cell["source"]) for cell in cells if cell.get("cell_type") == "code"]
    return hashlib.sha256(json.dumps(code).encode()).hexdigest()


def data_hashes(root: Path | None = None) -> dict[str, str]:
    """Hash of each MNIST file the loader would read (by content: touching a file changes nothing)."""
    from ..data import default_root, find_file

    root = root or default_root()
    found = {name: find_file(root, name) for name in MD5}
    return {name: file_hash(path) if path else "missing" for name, path in found.items()}


def git_state() -> dict:
    """The commit of the work tree and whether it had uncommitted changes (None outside git)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def record_path(profile: str, notebook: str) -> Path:
    return paths.profile_dir(profile) / "provenance" / f"{notebook}.json"


# A notebook record's fields and their types: a record read from disk may have been written
# by another machine or cut short, and is used only if it has this shape.
RECORD_FIELDS = {"notebook": str, "profile": str, "parameters": dict, "notebook_hash": str, "data": dict,
                 "git": dict, "started": str, "wall_seconds": (int, float), "sources": dict, "runs": dict,
                 "outputs": dict, "changes": dict}


def record_problem(record) -> str | None:
    """What makes a notebook record unusable (None: it has the shape the runner writes)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    for field, kind in RECORD_FIELDS.items():
        if not isinstance(record.get(field), kind) or isinstance(record.get(field), bool):
            return f"its {field!r} is missing or not a {getattr(kind, '__name__', 'number')}"
    for field in ("sources", "runs", "outputs"):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in record[field].items()):
            return f"its {field!r} holds something other than names and hashes"
    return None


def read_record(profile: str, notebook: str) -> dict | None:
    """The notebook's last provenance record, or None if it never ran through the runner or the
    record is unusable (cut short, hand-edited, another shape): as if never run."""
    path = record_path(profile, notebook)
    try:
        record = json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None
    except (OSError, ValueError):
        return None
    return record if record is not None and record_problem(record) is None else None


def staleness(record: dict | None, *, notebook_file: Path, parameters: dict, profile_dir: Path) -> list[str]:
    """Why a notebook's artifacts no longer match their inputs; an empty list means fresh."""
    if record is None:
        return ["never run (no provenance record)"]
    reasons = []
    if notebook_code_hash(notebook_file) != record["notebook_hash"]:
        reasons.append(f"{notebook_file.name}'s code changed")
    for relative, digest in record["sources"].items():
        try:
            path = paths.inside(paths.ROOT, relative, "source")
        except LabError as error:
            reasons.append(str(error))
            continue
        if not path.exists():
            reasons.append(f"{relative} was removed")
        elif code_hash(path) != digest:
            reasons.append(f"{relative} changed")
    if data_hashes() != record["data"]:
        changed = [name for name, digest in data_hashes().items() if record["data"].get(name) != digest]
        reasons.append(f"MNIST data changed ({', '.join(changed)})")
    for key, value in parameters.items():
        if record["parameters"].get(key) != value:
            reasons.append(f"parameter {key} changed ({record['parameters'].get(key)!r} → {value!r})")
    for relative, fingerprint in record["runs"].items():
        try:
            run_directory = paths.inside(profile_dir, relative, "run")
        except LabError as error:
            reasons.append(str(error))
            continue
        reasons += [reason for reason in run_staleness(run_directory, fingerprint) if reason not in reasons]
    for relative, digest in record["outputs"].items():
        try:
            path = paths.inside(profile_dir, relative, "output")
        except LabError as error:
            reasons.append(str(error))
            continue
        if not path.is_file():
            reasons.append(f"{relative} is missing")
        elif file_hash(path) != digest:
            reasons.append(f"{relative} was modified after the run")
    return reasons
